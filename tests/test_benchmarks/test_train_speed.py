# Copyright (c) rekd_mm contributors. All rights reserved.
"""Smoke and correctness tests of benchmarks/train_speed.py (nothing here is
timed: the numbers only have to exist and be consistent)."""
import copy
import json
import math
import os.path as osp

import pytest
import torch

from tests.scripts import load_script
from tests.toy_configs import REPO_ROOT, toy_model_cfg, toy_runner_cfg


def _load_script(name: str):
    path = osp.join(REPO_ROOT, 'benchmarks', f'{name}.py')
    return load_script(path)


@pytest.fixture(scope='module')
def train_speed():
    return _load_script('train_speed')


def _toy_rekd(train_speed, center=None):
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmpretrain.registry import MODELS

    import rekd_mm  # noqa: F401
    init_default_scope('mmpretrain')
    torch.manual_seed(0)
    model_cfg = toy_model_cfg()
    model_cfg['miner']['center'] = center
    model = MODELS.build(model_cfg)
    model.train()
    # Θ = -1: every anchor and slot is assigned, the mining path is active.
    train_speed.prepare_bank(model, threshold=-1.0, seed=0, num_classes=10)
    cfg = Config(
        dict(
            optim_wrapper=dict(
                type='OptimWrapper',
                optimizer=dict(
                    type='SGD', lr=0.05, momentum=0.9, weight_decay=1e-4))))
    return model, cfg


def _toy_inputs(seed: int):
    from mmpretrain.structures import DataSample
    gen = torch.Generator().manual_seed(seed)
    inputs = [torch.randn(8, 3, 16, 16, generator=gen) for _ in range(2)]
    labels = torch.randint(10, (8, ), generator=gen)
    return inputs, [DataSample().set_gt_label(int(y)) for y in labels]


def test__prepare_bank_activates_the_mining_path(train_speed):
    model, _ = _toy_rekd(train_speed)
    assert model.miner.is_initialized
    assert int(model.queue_count) == model.queue_len
    # Θ = -1 assigns every slot, to one of the K prototypes.
    assert (model.queue_assign >= 0).all()
    assert int(model.queue_assign.max()) < model.miner.num_prototypes
    assert (model.queue_labels >= 0).all()


@pytest.mark.parametrize('center', [None, 'batch'])
def test__step_by_step_replay_equals_train_step(train_speed, center):
    """The breakdown re-plays ReKD.loss: same losses, buffers and weights
    after several steps (one of them refreshing the queue cache), in the
    plain and the batch-centred mining space."""
    model_a, cfg = _toy_rekd(train_speed, center)
    model_b = copy.deepcopy(model_a)
    optim_a = train_speed.build_optim_wrapper(model_a, cfg, 'cpu')
    optim_b = train_speed.build_optim_wrapper(model_b, cfg, 'cpu')
    timer = train_speed.PhaseTimer('cpu')
    assert model_a.queue_refresh_interval == 2
    for step in range(3):
        inputs, samples = _toy_inputs(step)
        state = torch.get_rng_state()
        losses_a = train_speed.train_step(model_a, optim_a, inputs, samples)
        torch.set_rng_state(state)
        losses_b = train_speed.rekd_step_by_step(model_b, optim_b, inputs,
                                                 samples, timer)
        assert losses_a.keys() == losses_b.keys()
        for key in losses_a:
            torch.testing.assert_close(
                losses_a[key], losses_b[key], rtol=0, atol=1e-6, msg=key)
    # Every phase of the grouping was timed in the last step.
    timed = set(timer.times)
    for members in train_speed.PHASE_GROUPS.values():
        assert set(members) <= timed
    state_a, state_b = model_a.state_dict(), model_b.state_dict()
    assert state_a.keys() == state_b.keys()
    for key in state_a:
        torch.testing.assert_close(
            state_a[key], state_b[key], rtol=0, atol=1e-6, msg=key)


def test__staleness_cycle_mean_is_the_mean_of_ages_below_the_interval(
        train_speed):
    # f(age) = 0.1 * age; interval I sees ages 0..I-1 with f(0) = 0.
    records = [
        dict(age=a, slot_mismatch=0.1 * a, pair_error=0.2 * a)
        for a in range(1, 6)
    ]
    out = train_speed.summarise_staleness(dict(records=records), [1, 3, 10])
    assert out['mean_over_cycle']['1']['slot_mismatch'] == 0.0
    assert out['mean_over_cycle']['3']['slot_mismatch'] == pytest.approx(
        (0.0 + 0.1 + 0.2) / 3)
    assert out['mean_over_cycle']['3']['pair_error'] == pytest.approx(0.2)
    # Interval 10 needs ages up to 9, which were not recorded.
    assert '10' not in out['mean_over_cycle']
    assert out['at_age']['5']['slot_mismatch'] == pytest.approx(0.5)


def _toy_config_file(tmp_path) -> str:
    from mmengine.config import Config
    cfg_path = str(tmp_path / 'toy_rekd.py')
    Config(
        toy_runner_cfg(
            str(tmp_path / 'work_dir'),
            miner_hook=dict(init_iter=2, source='queue'))).dump(cfg_path)
    return cfg_path


def test__teacher_baseline_and_miner_use_the_teachers_dimension(
        train_speed, tmp_path):
    """With teacher_feat_dim != feat_dim, the teacher's MoCo v2 baseline
    queues keys of the teacher's dimension and the miner-only measurement
    draws teacher keys of it (a student-sized key would not fit the bank)."""
    from mmengine.config import Config
    model_cfg = toy_model_cfg(teacher_feat_dim=24)
    model_cfg['teacher_neck']['out_channels'] = 24
    cfg_path = str(tmp_path / 'toy_rekd_dims.py')
    Config(
        toy_runner_cfg(
            str(tmp_path / 'work_dir'),
            miner_hook=dict(init_iter=2, source='queue'),
            model=model_cfg)).dump(cfg_path)
    cfg = Config.fromfile(cfg_path)
    teacher = train_speed.build_model(cfg, 'moco_teacher')
    student = train_speed.build_model(cfg, 'moco_student')
    assert teacher.queue.shape == (24, cfg.model.queue_len)
    assert student.queue.shape == (16, cfg.model.queue_len)

    out = str(tmp_path / 'speed.json')
    train_speed.main([
        cfg_path, '--iters', '1', '--warmup', '0', '--miner-batch', '16',
        '--variants', 'moco_teacher', '--in-process', '--out', out
    ])
    with open(out) as f:
        var = json.load(f)['variants']
    assert var['moco_teacher']['median_step_seconds'] > 0
    assert var['miner']['phase_seconds']['bank_update'] > 0


def test__train_speed_runs_and_writes_valid_json(train_speed, tmp_path):
    """Every measurement of the benchmark on the toy config (in-process, to
    keep the test short): the results are complete and consistent."""
    out = str(tmp_path / 'speed.json')
    train_speed.main([
        _toy_config_file(tmp_path), '--iters', '2', '--warmup', '0',
        '--staleness-iters', '3', '--refresh-intervals', '1', '2',
        '--miner-batch', '16', '--in-process', '--out', out
    ])
    with open(out) as f:
        results = json.load(f)
    var, summary = results['variants'], results['summary']
    assert set(var) == {
        'moco_student', 'moco_teacher', 'rekd', 'rekd_exact', 'rekd_breakdown',
        'loading', 'staleness', 'miner'
    }
    for name in train_speed.TIMED:
        assert len(var[name]['step_seconds']) == 2
        assert var[name]['median_step_seconds'] > 0
    for name in ('moco_student', 'moco_teacher', 'rekd'):
        assert var[name]['memory']['peak_rss_mib'] > 0
    # The timed ReKD mined relations (Θ = -1 assigns every anchor).
    assert var['rekd']['relation_pos_per_anchor'] > 0
    assert var['rekd']['num_prototypes'] == 4
    assert var['rekd']['refresh_seconds'] > 0
    for key in ('rekd_over_student_plus_teacher',
                'mining_plus_bank_update_share', 'loading_wait_share'):
        assert math.isfinite(summary[key]) and summary[key] > 0
    shares = summary['breakdown_groups_share']
    assert sum(shares.values()) == pytest.approx(1.0)
    assert set(summary['refresh_cost_share']) == {'1', '2'}
    miner, phases = summary['miner_only'], var['miner']['phase_seconds']
    assert miner['batch'] == 16
    assert miner['mining_plus_bank_update_seconds'] > 0
    assert miner['all_extra_seconds'] == pytest.approx(
        miner['mining_plus_bank_update_seconds'] + phases['relation_stats'] +
        phases['relation_loss_fwd_bwd'] - phases['infonce_fwd_bwd'])
    assert miner['estimated_rekd_step_seconds'] > 0
    # The staleness study trained 3 iterations past the bank's
    # initialisation without refreshing the cache.
    records = var['staleness']['records']
    assert [r['age'] for r in records] == [1, 2, 3]
    assert all(0.0 <= r['slot_mismatch'] <= 1.0 for r in records)
    assert summary['staleness']['mean_over_cycle']['2']['slot_mismatch'] >= 0
    with open(osp.splitext(out)[0] + '.md') as f:
        text = f.read()
    assert 'ReKD step, phase by phase' in text
    assert results['machine']['torch'] == torch.__version__


def test__train_speed_measures_in_fresh_subprocesses(train_speed, tmp_path):
    """The default path: timing and memory workers run as subprocesses and
    hand back their results (synthetic inputs of the requested size)."""
    out = str(tmp_path / 'speed.json')
    train_speed.main([
        _toy_config_file(tmp_path), '--synthetic', '--img-size', '16',
        '--batch-size', '8', '--iters', '1', '--warmup', '0', '--variants',
        'moco_student', '--out', out
    ])
    with open(out) as f:
        results = json.load(f)
    student = results['variants']['moco_student']
    assert student['inputs']['view_shape'] == [8, 3, 16, 16]
    assert len(student['step_seconds']) == 1
    assert student['memory']['peak_rss_mib'] > 0
    assert student['memory']['subprocess_seconds'] > 0
    assert results['timing_subprocess_seconds'] > 0
