# Copyright (c) rekd_mm contributors. All rights reserved.
"""benchmarks/regime_search.py end to end with tiny settings (2 iterations,
kNN on 100 + 50 Fashion-MNIST images): curves from the initialisation on,
results written after the arm, a search with other settings refused."""
import json
import os
import os.path as osp
import subprocess
import sys

import pytest

from tests.scripts import load_script
from tests.toy_configs import FASHION_MNIST_ROOT, REPO_ROOT

SCRIPT = osp.join(REPO_ROOT, 'benchmarks', 'regime_search.py')
TINY = [
    'model.queue_len=256', 'train_dataloader.batch_size=16',
    'train_dataloader.num_workers=0',
    'train_dataloader.persistent_workers=False',
    'knn_train_dataloader.num_workers=0', 'knn_val_dataloader.num_workers=0',
    'default_hooks.logger.interval=1'
]


@pytest.fixture(scope='module')
def search():
    return load_script(SCRIPT)


def _run(args):
    return subprocess.run([sys.executable, SCRIPT, *args],
                          cwd=REPO_ROOT,
                          env=dict(os.environ, OMP_NUM_THREADS='1'),
                          capture_output=True,
                          text=True,
                          timeout=600)


def test__curves_start_at_the_initialisation_and_resume_joins_them(tmp_path):
    assert osp.isdir(FASHION_MNIST_ROOT), 'run tools/setup_env.sh first'
    out = tmp_path / 'search.json'
    common = [
        '--dataset', 'fashion-mnist', '--iters', '4', '--knn-interval', '1',
        '--knn-max-train', '100', '--knn-max-val', '50', '--knn-k', '10',
        '--work-root',
        str(tmp_path / 'work'), '--out',
        str(out)
    ]
    arm = [
        '--arm', 'lr0.01', 'optim_wrapper.optimizer.lr=0.01',
        'default_hooks.checkpoint.interval=2', *TINY
    ]
    # An arm stopped after 2 of its 4 iterations (as a session's end would),
    # with its checkpoint at iteration 2.
    proc = _run(common + arm + ['train_cfg.max_iters=2'])
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    first = json.loads(out.read_text())['arms']['lr0.01']
    assert [s for s, _ in first['curves']['knn/student_top1']] == [0, 1, 2]
    assert all(0 <= v <= 100 for _, v in first['curves']['knn/student_top1'])
    assert [i for i, _ in first['curves']['loss']] == [1, 2]
    # The override reached the run: its config says so.
    work = tmp_path / 'work' / 'fashion-mnist' / 'lr0.01'
    dumped = next(work.glob('*/vis_data/config.py'))
    assert 'lr=0.01' in dumped.read_text()
    md = (tmp_path / 'search.md').read_text()
    assert '| lr0.01 |' in md and 'kNN@0' in md and 'kNN@2' in md
    assert (tmp_path / 'search.png').stat().st_size > 0

    # --resume continues from iteration 2; the curve joins the first part.
    proc = _run(common + ['--resume'] + arm)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    resumed = json.loads(out.read_text())['arms']['lr0.01']
    assert resumed['resumed'] and '--resume' in resumed['command']
    steps = [s for s, _ in resumed['curves']['knn/student_top1']]
    assert steps == [0, 1, 2, 3, 4]
    assert resumed['curves']['knn/student_top1'][:3] == \
        first['curves']['knn/student_top1']
    assert [i for i, _ in resumed['curves']['loss']] == [1, 2, 3, 4]

    # Other settings into the same file: refused before training.
    proc = _run([a if a != '4' else '3'
                 for a in common[:4]] + common[4:] + ['--arm', 'other', *TINY])
    assert proc.returncode != 0 and 'other settings' in proc.stderr
    assert not (tmp_path / 'work' / 'fashion-mnist' / 'other').exists()
    assert list(json.loads(out.read_text())['arms']) == ['lr0.01']


def test__arm_names_and_overrides_are_checked(search):
    with pytest.raises(SystemExit):
        search.parse_args(
            ['--dataset', 'cifar10', '--out', 'x.json', '--arm', 'a', 'b'])
    with pytest.raises(SystemExit):
        search.parse_args([
            '--dataset', 'cifar10', '--out', 'x.json', '--arm', 'a', '--arm',
            'a'
        ])
    args = search.parse_args(
        ['--dataset', 'cifar10', '--out', 'x.json', '--arm', 'base'])
    assert args.config.endswith(
        'mocov2_mobilenet-v2-cifar_1xb64-2ki_cifar10.py')


def test__curves_are_read_from_monitor_and_logger_entries(search):
    entries = [
        {
            'knn/student_top1': 20.0,
            'step': 0
        },
        {
            'loss': 8.0,
            'iter': 1,
            'lr': 0.1,
            'step': 1
        },
        {
            'knn/student_top1': 30.0,
            'knn/teacher_top1': 40.0,
            'step': 2
        },
    ]
    # A resumed run logs step 2 again: the later value wins.
    entries.append({'knn/student_top1': 31.0, 'step': 2})
    curves = search.arm_curves(entries)
    assert curves['knn/student_top1'] == [[0, 20.0], [2, 31.0]]
    assert curves['knn/teacher_top1'] == [[2, 40.0]]
    assert curves['loss'] == [[1, 8.0]]
