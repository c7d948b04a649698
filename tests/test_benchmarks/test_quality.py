# Copyright (c) rekd_mm contributors. All rights reserved.
"""End-to-end test of benchmarks/quality.py on Fashion-MNIST with tiny
settings (6 iterations, a 256-slot queue, K = 8, kNN on 300 + 200 images),
and of its variant grammar. Nothing here is timed; the accuracies of such
short runs are only checked to be valid percentages."""
import json
import math
import os
import os.path as osp
import subprocess
import sys

import pytest

from tests.scripts import load_script
from tests.toy_configs import FASHION_MNIST_ROOT, REPO_ROOT

SCRIPT = osp.join(REPO_ROOT, 'benchmarks', 'quality.py')
ITERS = 6
INIT_ITER = 2
NUM_PROTOTYPES = 8
VARIANTS = ['mocov2', 'rekd', 'rekd_oracle', 'untrained', 'pixels']
TRAINED = ['mocov2', 'rekd', 'rekd_oracle']


@pytest.fixture(scope='module')
def quality():
    return load_script(SCRIPT)


def _run_quality(cmd, timeout):
    return subprocess.run(
        cmd,
        cwd=REPO_ROOT,
        env=dict(os.environ, OMP_NUM_THREADS='1'),
        capture_output=True,
        text=True,
        timeout=timeout)


# A ReKD variant without _kd{W} switches the response KD off explicitly: the
# small4k configs distil by default (session 13), and a name must mean the
# same run in every committed table.
NO_KD = ['model.loss_weights.kd=0.0', 'model.kd_projection=False']


def test__variant_names_map_to_overrides(quality):
    spec = quality.parse_variant('rekd_k50_theta0.7')
    assert (spec['algorithm'], spec['num_prototypes'],
            spec['threshold']) == ('rekd', 50, 0.7)
    assert quality.variant_cfg_options(
        spec, 100, miner_hook_index=0) == [
            'model.miner.num_prototypes=50', 'model.miner.threshold=0.7',
            *NO_KD
        ]
    # No relation: the bank is never clustered within the run.
    spec = quality.parse_variant('rekd_no_relation')
    assert quality.variant_cfg_options(
        spec, 100, miner_hook_index=3) == [
            'custom_hooks.3.init_iter=101',
            'custom_hooks.3.allow_no_mining=True', *NO_KD
        ]
    spec = quality.parse_variant('rekd_offline')
    assert quality.variant_cfg_options(
        spec, 100, offline_teacher='/x.pth', offline_prefix='teacher.') == [
            *NO_KD, 'model.teacher_pretrained.checkpoint=/x.pth',
            'model.teacher_pretrained.prefix=teacher.'
        ]
    with pytest.raises(ValueError, match='--offline-teacher'):
        quality.variant_cfg_options(spec, 100)
    assert quality.variant_cfg_options(
        quality.parse_variant('mocov2'),
        100,
        miner_hook_index=0,
        miner_init_iter=5) == []
    spec = quality.parse_variant('rekd_oracle')
    assert quality.variant_cfg_options(
        spec, 100) == ['model.relation_source=oracle_labels', *NO_KD]
    # Response KD through the student's projection, with or without the
    # relations.
    spec = quality.parse_variant('rekd_no_relation_kd0.5')
    assert (spec['kd_weight'], spec['num_prototypes']) == (0.5, None)
    assert quality.variant_cfg_options(
        spec, 100, miner_hook_index=1) == [
            'custom_hooks.1.init_iter=101',
            'custom_hooks.1.allow_no_mining=True', 'model.loss_weights.kd=0.5',
            'model.kd_projection=True'
        ]
    assert quality.parse_variant('rekd_k50_kd1')['num_prototypes'] == 50
    with pytest.raises(ValueError, match='KD weight must be > 0'):
        quality.parse_variant('rekd_kd0')
    for ref in ('untrained', 'pixels', 'supervised'):
        assert quality.parse_variant(ref)['algorithm'] == ref
    for bad in ('moco', 'rekd_kx', 'rekd_theta2', 'rekd_k5_k6', 'rekdk5',
                'pixels_k5', 'rekd_kd', 'rekd_kd1_kd2'):
        with pytest.raises(ValueError, match=repr(bad)):
            quality.parse_variant(bad)


@pytest.mark.parametrize('regime, iters', [('small', 2000), ('small4k', 4000),
                                           ('demo', 400)])
def test__iters_default_to_the_regime_configs(quality, regime, iters):
    args = quality.parse_args(['--regime', regime])
    assert args.iters == iters
    # Each regime's configs end their cosine schedule there.
    cfg = quality.load_cfg(quality.REGIMES[regime]['cifar10']['mocov2'], [])
    assert cfg.train_cfg.max_iters == iters
    assert quality.parse_args(['--regime', regime, '--iters', '7']).iters == 7


@pytest.mark.parametrize('dataset', ['cifar10', 'fashion-mnist'])
def test__small4k_variant_names_keep_their_kd_against_the_config_default(
        quality, dataset):
    from mmengine.registry import init_default_scope
    from mmpretrain.registry import MODELS
    init_default_scope('mmpretrain')
    config = quality.REGIMES['small4k'][dataset]['rekd']
    assert quality.load_cfg(config, []).model.loss_weights.kd == 4.0
    # `rekd` (the committed kd=0 arms) switches the config's KD off, the
    # projection with it; `rekd_kd1` keeps the committed kd=1 arms' weight
    # below the config's default; `rekd_kd4` is that default.
    for name, kd in (('rekd', 0.0), ('rekd_oracle', 0.0), ('rekd_kd1', 1.0),
                     ('rekd_no_relation_kd1', 1.0), ('rekd_kd4', 4.0)):
        options = quality.variant_cfg_options(
            quality.parse_variant(name),
            4000,
            miner_hook_index=quality.miner_hook_index(config))
        model = MODELS.build(quality.load_cfg(config, options).model)
        assert model.loss_weights['kd'] == kd, name
        assert (model.kd_projection is not None) == (kd > 0), name


def test__end_to_end_on_fashion_mnist(tmp_path):
    assert osp.isdir(FASHION_MNIST_ROOT), 'run tools/setup_env.sh first'
    out = tmp_path / 'quality.json'
    no_workers = [
        f'{loader}.num_workers=0'
        for loader in ('train_dataloader', 'knn_train_dataloader',
                       'knn_val_dataloader')
    ]
    cmd = [
        sys.executable, SCRIPT, '--datasets', 'fashion-mnist', '--variants',
        *VARIANTS, '--iters',
        str(ITERS), '--threads', '1', '--work-root',
        str(tmp_path / 'work'), '--out',
        str(out), '--knn-max-train', '300', '--knn-max-val', '200',
        '--miner-init-iter',
        str(INIT_ITER), '--probe-epochs', '1', '--probe-variants', 'mocov2',
        '--extra-cfg-options', 'model.queue_len=256',
        'train_dataloader.batch_size=16',
        'train_dataloader.persistent_workers=False',
        'default_hooks.logger.interval=1', *no_workers, '--rekd-cfg-options',
        f'model.miner.num_prototypes={NUM_PROTOTYPES}', '--probe-cfg-options',
        'train_dataloader.dataset.indices=64',
        'val_dataloader.dataset.indices=64', 'train_dataloader.batch_size=32',
        'val_dataloader.batch_size=32', 'train_dataloader.num_workers=0',
        'val_dataloader.num_workers=0',
        'train_dataloader.persistent_workers=False',
        'val_dataloader.persistent_workers=False'
    ]
    proc = _run_quality(cmd, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    results = json.loads(out.read_text())
    assert '--iters 6' in results['command']
    assert results['git_commit'] == results['machine']['git_commit']
    assert results['settings']['iters'] == ITERS
    records = {r['variant']: r for r in results['records']}
    assert [r['variant'] for r in results['records']] == VARIANTS
    for name, rec in records.items():
        assert rec['dataset'] == 'fashion-mnist'
        assert f'train_cfg.max_iters={ITERS}' in rec['cfg_options']
        if name in TRAINED:
            assert rec['checkpoint'].endswith(f'iter_{ITERS}.pth')
            assert rec['train_wall_s'] > 0
            # Logged every iteration here: the loop time is their sum.
            assert 0 < rec['train_loop_s'] < rec['train_wall_s']
            assert rec['knn']['student']['prefix'] == 'backbone.'
        else:
            assert rec['train_wall_s'] == 0 and 'checkpoint' not in rec
        knn = rec['knn']['student']
        assert (knn['num_train'], knn['num_val']) == (300, 200)
        # The linear probe on the same frozen features, to convergence.
        probe = knn['probe']
        assert rec['student_probe_top1'] == probe['top1']
        assert 0 <= probe['top1'] <= 100 and probe['converged']
        top1 = rec['student_knn_top1']
        assert math.isfinite(top1) and 0 <= top1 <= 100
        assert top1 == knn['k200_top1']
        assert rec['delta_vs_mocov2'] == pytest.approx(
            top1 - records['mocov2']['student_knn_top1'])
        if not name.startswith('rekd'):
            assert 'teacher' not in rec['knn'] and 'relation' not in rec
        else:
            assert rec['knn']['teacher']['prefix'] == 'teacher.backbone.'
            # Half-width ResNet-18 with the CIFAR stem.
            assert rec['knn']['teacher']['feat_dim'] == 256
            assert 0 <= rec['teacher_knn_top1'] <= 100
    assert records['pixels']['knn']['student']['feat_dim'] == 3 * 32 * 32
    assert records['untrained']['knn']['student']['feat_dim'] == 1280
    # The teacher never sees the relation term (its gradient reaches the
    # student only): same seed, same data, same teacher.
    assert records['rekd']['teacher_knn_top1'] == \
        records['rekd_oracle']['teacher_knn_top1']
    # The oracle's positives are the labels' own: every mined pair agrees.
    oracle = records['rekd_oracle']['relation']['relation_precision']
    assert oracle and all(p == 1.0 for _, p in oracle)
    assert 'model.relation_source=oracle_labels' in \
        records['rekd_oracle']['cfg_options']

    # ReKD mined relations from the iteration after the bank's clustering.
    relation = records['rekd']['relation']
    precision = relation['relation_precision']
    assert precision, 'no relation precision logged for rekd'
    assert all(it > INIT_ITER and 0 <= p <= 1 for it, p in precision)
    assert records['rekd']['relation_precision_last'] == precision[-1][1]
    assert [it for it, _ in relation['proto_in_use']
            ] == list(range(1, ITERS + 1))
    assert all(0 <= v <= NUM_PROTOTYPES for _, v in relation['proto_in_use'])
    assert relation['relation_pos_per_anchor'][-1][1] > 0

    # mmpretrain's probe config ran for mocov2 only, one epoch on 64 images.
    probe = records['mocov2']['probe']
    assert len(probe['epochs']) == 1
    assert 0 <= probe['top1'] <= 100 and probe['top1'] == \
        records['mocov2']['mmpretrain_probe_top1']
    assert 'probe' not in records['rekd']
    assert 'model.backbone.type=MobileNetV2_CIFAR' in probe['cfg_options']

    # Markdown table and plot next to the JSON, paths printed.
    md = out.with_suffix('.md').read_text()
    assert '| dataset | variant |' in md
    for name in VARIANTS:
        assert f'| fashion-mnist | {name} |' in md
    png = out.with_suffix('.png')
    assert png.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    assert str(png) in proc.stdout and '| fashion-mnist | rekd |' in \
        proc.stdout

    # --append: an offline variant whose teacher is the rekd run's, added
    # to the same table; the earlier records stay as they were.
    first = results
    cmd_append = cmd[:cmd.index('--variants') + 1] + [
        'rekd_offline'
    ] + cmd[cmd.index('--iters'):] + [
        '--append', '--offline-teacher', records['rekd']['checkpoint'],
        '--offline-teacher-prefix', 'teacher.'
    ]
    cmd_append[cmd_append.index('--probe-variants') + 1] = 'rekd_offline'
    proc = _run_quality(cmd_append, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads(out.read_text())
    assert [r['variant']
            for r in results['records']] == VARIANTS + ['rekd_offline']
    assert results['records'][:len(VARIANTS)] == first['records']
    assert results['commands'] == [first['command'], results['command']]
    assert '--append' in results['command']
    offline = results['records'][len(VARIANTS)]
    assert 'model.teacher_pretrained.prefix=teacher.' in offline['cfg_options']
    assert offline['delta_vs_mocov2'] == pytest.approx(
        offline['student_knn_top1'] - records['mocov2']['student_knn_top1'])
    md = out.with_suffix('.md').read_text()
    assert '| fashion-mnist | rekd_offline |' in md
    assert md.count('Command: `') == 2

    # Another budget is refused before anything trains.
    cmd_other = list(cmd_append)
    cmd_other[cmd_other.index('--iters') + 1] = str(ITERS + 1)
    proc = _run_quality(cmd_other, timeout=120)
    assert proc.returncode != 0
    assert f'--iters {ITERS}' in proc.stderr and 'equal budgets' in \
        proc.stderr
    assert json.loads(out.read_text()) == results


def test__reuse_scores_a_finished_run_again_without_training(tmp_path):
    """--reuse takes the work dir's run of the same config and overrides
    (on the supervised reference, which this also runs end to end)."""
    out = tmp_path / 'quality.json'
    cmd = [
        sys.executable, SCRIPT, '--datasets', 'fashion-mnist', '--variants',
        'supervised', '--iters', '2', '--threads', '1', '--work-root',
        str(tmp_path / 'work'), '--out',
        str(out), '--knn-max-train', '200', '--knn-max-val', '100',
        '--no-feature-probe', '--extra-cfg-options',
        'default_hooks.logger.interval=1', 'train_dataloader.batch_size=16',
        'train_dataloader.num_workers=0',
        'train_dataloader.persistent_workers=False',
        'knn_train_dataloader.num_workers=0',
        'knn_val_dataloader.num_workers=0'
    ]
    proc = _run_quality(cmd, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    first = json.loads(out.read_text())['records'][0]
    assert 'probe' not in first['knn']['student']
    assert first['config'].startswith('configs/benchmarks/supervised/')
    assert first['knn']['student']['feat_dim'] == 1280

    proc = _run_quality(cmd + ['--reuse'], timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    again = json.loads(out.read_text())['records'][0]
    assert 'reusing' in proc.stdout and 'training 2 iterations' not in \
        proc.stdout
    assert again['reused'] and again['train_wall_s'] == first['train_wall_s']
    assert again['student_knn_top1'] == first['student_knn_top1']

    # Other overrides: trained anew, not reused.
    other = cmd[:cmd.index('train_dataloader.batch_size=16')] + [
        'train_dataloader.batch_size=8'
    ] + cmd[cmd.index('train_dataloader.batch_size=16') + 1:] + ['--reuse']
    proc = _run_quality(other, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert 'training 2 iterations' in proc.stdout


def test__resume_continues_an_interrupted_run(tmp_path):
    """--resume: a run stopped after its checkpoint at iteration 2 goes on
    to the end from there (a study split across sessions)."""
    work = tmp_path / 'work'
    common = [
        'default_hooks.logger.interval=1',
        'default_hooks.checkpoint.interval=2',
        'train_dataloader.batch_size=16', 'train_dataloader.num_workers=0',
        'train_dataloader.persistent_workers=False', 'randomness.seed=0',
        'knn_train_dataloader.num_workers=0',
        'knn_val_dataloader.num_workers=0'
    ]
    config = 'configs/benchmarks/supervised/' \
        'mobilenet-v2-cifar_1xb64-2ki_fashion-mnist.py'
    # The "interrupted" first part: 2 iterations, checkpoint at 2.
    first = subprocess.run([
        sys.executable, 'tools/train.py', config, '--work-dir',
        str(work / 'fashion-mnist' / 'supervised'), '--cfg-options',
        'train_cfg.max_iters=2', *common
    ],
                           cwd=REPO_ROOT,
                           env=dict(os.environ, OMP_NUM_THREADS='1'),
                           capture_output=True,
                           text=True,
                           timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    out = tmp_path / 'quality.json'
    cmd = [
        sys.executable, SCRIPT, '--datasets', 'fashion-mnist', '--variants',
        'supervised', '--iters', '4', '--threads', '1', '--work-root',
        str(work), '--out',
        str(out), '--knn-max-train', '100', '--knn-max-val', '50',
        '--no-feature-probe', '--resume', '--extra-cfg-options', *common[:-3]
    ]
    proc = _run_quality(cmd, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rec = json.loads(out.read_text())['records'][0]
    assert '--resume' in rec['train_command']
    assert rec['checkpoint'].endswith('iter_4.pth')
    assert rec['last_logged']['iter'] == 4


HASH_SHUFFLE = ('benchmarks/configs/mocov2-hash-shuffle_mobilenet-v2-cifar_'
                '1xb64-4ki_fashion-mnist.py')


def test__mocov2_config_trains_an_analysis_arm_under_its_own_name(
        quality, tmp_path):
    args = quality.parse_args([
        '--regime', 'small4k', '--datasets', 'fashion-mnist', '--variants',
        'mocov2', 'untrained', '--mocov2-config', HASH_SHUFFLE, '--out',
        str(tmp_path / 'analysis_x.json')
    ])
    plan = {item['spec']['name']: item for item in quality._plan(args)}
    assert plan['mocov2']['config'] == HASH_SHUFFLE
    # The reference rows keep the regime's MoCo v2 config.
    assert plan['untrained']['config'] == quality.REGIMES['small4k'][
        'fashion-mnist']['mocov2']
    # The config builds mmpretrain's MoCo with ReKD's permutation.
    cfg = quality.load_cfg(HASH_SHUFFLE, [])
    assert cfg.model.type == 'MoCoHashShuffle'


@pytest.mark.parametrize('extra, message', [
    (['--datasets', 'fashion-mnist', 'cifar10'], 'one --datasets'),
    (['--datasets', 'fashion-mnist', '--out', 'quality_small4k_x.json'
      ], 'outside quality_'),
])
def test__mocov2_config_refuses_what_the_summary_would_miscount(
        quality, extra, message, capsys):
    with pytest.raises(SystemExit):
        quality.parse_args([
            '--regime', 'small4k', '--variants', 'mocov2', '--mocov2-config',
            HASH_SHUFFLE
        ] + extra)
    assert message in capsys.readouterr().err
