# Copyright (c) rekd_mm contributors. All rights reserved.
"""tools/test.py and tools/dist_test.sh on a linear probe, and
StrictPretrainedCheckHook guarding training only."""
import json
import os
import os.path as osp
import re
import subprocess
import sys

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmengine.runner import Runner
from mmpretrain.registry import MODELS

import rekd_mm  # noqa: F401
from tests.toy_configs import REPO_ROOT, toy_model_cfg
from tests.toy_probe import toy_probe_cfg, write_config, write_toy_images

TRAIN = osp.join(REPO_ROOT, 'tools', 'train.py')
TEST = osp.join(REPO_ROOT, 'tools', 'test.py')
DIST_TEST = osp.join(REPO_ROOT, 'tools', 'dist_test.sh')
TOP1 = re.compile(r'accuracy/top1: ([0-9.]+)')


def _run(args, timeout=180):
    env = dict(
        os.environ,
        OMP_NUM_THREADS='1',
        PYTHONWARNINGS='ignore',
        CUDA_VISIBLE_DEVICES='',
        PYTHON=sys.executable)
    return subprocess.run(
        args,
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout)


@pytest.fixture(scope='module')
def probe(tmp_path_factory):
    """A toy student checkpoint, a probe config of this project's kind
    (rekd_mm imported, StrictPretrainedCheckHook) and one epoch of probe
    training with tools/train.py."""
    root = tmp_path_factory.mktemp('probe')
    init_default_scope('mmpretrain')
    torch.manual_seed(0)
    backbone = MODELS.build(toy_model_cfg()['backbone'])
    student = str(root / 'student.pth')
    torch.save(
        dict(state_dict={
            'backbone.' + k: v
            for k, v in backbone.state_dict().items()
        }), student)
    data_root = write_toy_images(str(root / 'data'))
    # The checkpoint stays empty in the file, as in configs/benchmarks.
    config = write_config(
        toy_probe_cfg(data_root, rekd_mm=True), str(root / 'probe.py'))
    work_dir = str(root / 'work')
    result = _run([
        sys.executable, TRAIN, config, '--work-dir', work_dir,
        '--no-persistent-workers', '--cfg-options',
        f'model.backbone.init_cfg.checkpoint={student}'
    ])
    assert result.returncode == 0, result.stderr[-3000:]
    # The strict check ran (and passed) during training.
    assert 'StrictPretrainedCheckHook: model.backbone will load' in \
        result.stdout + result.stderr
    val_top1 = float(TOP1.findall(result.stdout + result.stderr)[-1])
    return dict(
        config=config,
        data_root=data_root,
        checkpoint=osp.join(work_dir, 'epoch_1.pth'),
        val_top1=val_top1,
        root=root)


def test_test_tool_reports_the_probe_accuracy(probe, tmp_path):
    out = str(tmp_path / 'metrics.json')
    result = _run([
        sys.executable, TEST, probe['config'], probe['checkpoint'],
        '--work-dir',
        str(tmp_path), '--out', out, '--out-item', 'metrics'
    ])
    assert result.returncode == 0, result.stderr[-3000:]
    with open(out) as f:
        metrics = json.load(f)
    # The tested model is the trained one: the same data give the accuracy
    # that the validation at the end of training logged.
    assert metrics['accuracy/top1'] == pytest.approx(probe['val_top1'])
    assert TOP1.search(result.stdout + result.stderr)


def test_dist_test_on_two_cpu_processes_reports_the_same_accuracy(
        probe, tmp_path):
    result = _run([
        'bash', DIST_TEST, probe['config'], probe['checkpoint'], '2',
        '--work-dir',
        str(tmp_path)
    ],
                  timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    top1 = TOP1.findall(result.stdout + result.stderr)
    assert top1 and float(top1[-1]) == pytest.approx(probe['val_top1'])


def test_pretrained_check_guards_training_but_not_testing(probe, tmp_path):
    cfg = Config(
        toy_probe_cfg(
            probe['data_root'], rekd_mm=True, work_dir=str(tmp_path)))
    cfg.log_level = 'WARNING'
    # Testing: no init_cfg checkpoint is needed, the model comes from
    # load_from.
    cfg.load_from = probe['checkpoint']
    metrics = Runner.from_cfg(cfg.copy()).test()
    assert metrics['accuracy/top1'] == pytest.approx(probe['val_top1'])
    # Training the same config still stops in the check.
    cfg.load_from = None
    with pytest.raises(ValueError, match='names no checkpoint'):
        Runner.from_cfg(cfg).train()
