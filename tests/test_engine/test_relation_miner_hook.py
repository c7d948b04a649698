# Copyright (c) rekd_mm contributors. All rights reserved.
import io
import itertools
import os.path as osp
from unittest import mock

import pytest
import torch
from mmengine.config import Config
from mmengine.runner import Runner
from mmengine.utils import ProgressBar
from mmpretrain.utils import get_ori_model

import rekd_mm  # noqa: F401  (registers ReKD; allow-lists checkpoint globals)
from rekd_mm.models.utils import PrototypeBank
from tests.toy_configs import toy_model_cfg, toy_runner_cfg

_names = itertools.count()


class _InitCounter:
    """Wrap ``PrototypeBank.initialize`` (calling through) and record every
    call: the iteration and the number of embeddings clustered."""

    def __init__(self):
        self.calls = []
        self._original = PrototypeBank.initialize
        counter = self

        def counting(bank, embeddings, current_iter=0, **kwargs):
            counter.calls.append((current_iter, embeddings.shape[0]))
            return counter._original(
                bank, embeddings, current_iter=current_iter, **kwargs)

        self._patch = mock.patch.object(PrototypeBank, 'initialize', counting)

    def __enter__(self):
        self._patch.start()
        return self

    def __exit__(self, *exc):
        self._patch.stop()


def _runner(work_dir, **kwargs) -> Runner:
    kwargs.setdefault('experiment_name', f'miner_hook_{next(_names)}')
    return Runner.from_cfg(Config(toy_runner_cfg(str(work_dir), **kwargs)))


def _history(runner, name):
    return runner.message_hub.get_scalar(f'train/{name}').data[0]


@pytest.fixture(scope='module')
def straight_run(tmp_path_factory):
    """6 iterations, bank initialised from the queue at iteration 3,
    checkpoints at iterations 2, 4 and 6."""
    work_dir = tmp_path_factory.mktemp('straight')
    with _InitCounter() as counter:
        runner = _runner(
            work_dir,
            max_iters=6,
            miner_hook=dict(init_iter=3, source='queue'),
            checkpoint_interval=2)
        runner.train()
    return runner, counter.calls, work_dir


def test__bank_initialised_once_at_init_iter(straight_run):
    runner, calls, _ = straight_run
    model = get_ori_model(runner.model)
    # Clustered once, at iteration 3, from the 3 x 8 keys in the queue.
    assert calls == [(3, 24)]
    assert model.miner.is_initialized
    assert int(model.miner.last_cluster_iter) == 3
    # The update step kept the prototypes on the sphere.
    torch.testing.assert_close(
        model.miner.prototypes.norm(dim=1), torch.ones(4), rtol=0, atol=1e-5)


def test__statistics_logged_after_init(straight_run):
    runner, _, _ = straight_run
    assigned = _history(runner, 'proto_assigned_ratio')
    positives = _history(runner, 'relation_pos_per_anchor')
    in_use = _history(runner, 'proto_in_use')
    assert len(assigned) == len(positives) == len(in_use) == 6
    assert (assigned[:3] == 0).all() and (positives[:3] == 0).all()
    assert (assigned[3:] > 0).all() and (positives[3:] > 0).all()
    assert (in_use[3:] >= 1).all() and (in_use[3:] <= 4).all()
    assert len(_history(runner, 'relation_precision')) > 0


def test__checkpoint_holds_bank_and_queues(straight_run):
    runner, _, work_dir = straight_run
    model = get_ori_model(runner.model)
    # weights_only=True: works because rekd_mm allow-lists mmengine's
    # checkpoint globals.
    ckpt = torch.load(
        osp.join(work_dir, 'iter_6.pth'),
        map_location='cpu',
        weights_only=True)
    state = ckpt['state_dict']
    assert bool(state['miner.initialized'])
    assert int(state['miner.last_cluster_iter']) == 3
    assert torch.equal(state['miner.prototypes'], model.miner.prototypes)
    assert torch.equal(state['queue'], model.queue)
    assert torch.equal(state['teacher_queue'], model.teacher_queue)
    assert int(state['queue_ptr']) == (6 * 8) % 64
    before = torch.load(
        osp.join(work_dir, 'iter_2.pth'),
        map_location='cpu',
        weights_only=True)['state_dict']
    assert not bool(before['miner.initialized'])


def test__resume_after_init_does_not_recluster(straight_run, tmp_path):
    _, _, work_dir = straight_run
    ckpt = osp.join(work_dir, 'iter_4.pth')
    saved = torch.load(ckpt, map_location='cpu', weights_only=True)
    with _InitCounter() as counter:
        runner = _runner(
            tmp_path,
            max_iters=6,
            miner_hook=dict(init_iter=3, source='queue'),
            resume=True,
            load_from=ckpt)
        runner.train()
    model = get_ori_model(runner.model)
    assert counter.calls == []
    assert runner.iter == 6
    assert int(model.miner.last_cluster_iter) == 3
    # Trained on from the restored bank, not a new one.
    assert not torch.equal(model.miner.prototypes,
                           saved['state_dict']['miner.prototypes'])
    assert (_history(runner, 'relation_pos_per_anchor')[-2:] > 0).all()


def test__resume_before_init_initialises_at_init_iter(straight_run, tmp_path):
    _, _, work_dir = straight_run
    with _InitCounter() as counter:
        runner = _runner(
            tmp_path,
            max_iters=4,
            miner_hook=dict(init_iter=3, source='queue'),
            resume=True,
            load_from=osp.join(work_dir, 'iter_2.pth'))
        runner.train()
    assert counter.calls == [(3, 24)]
    assert int(get_ori_model(runner.model).miner.last_cluster_iter) == 3


def test__too_many_prototypes_fail_before_training(tmp_path):
    runner = _runner(
        tmp_path,
        max_iters=3,
        model=toy_model_cfg(num_prototypes=16),
        miner_hook=dict(init_iter=1, source='queue'))
    with _InitCounter() as counter, pytest.raises(
            ValueError, match='num_prototypes=16'):
        runner.train()
    assert runner.iter == 0
    assert counter.calls == []


def test__dataset_source_clusters_a_pass_over_the_data(tmp_path):
    bars = []

    class RecordingBar(ProgressBar):
        """The hook's progress bar, written to a string we can read."""

        def __init__(self, task_num=0, **kwargs):
            kwargs['file'] = io.StringIO()
            super().__init__(task_num, **kwargs)
            bars.append(self)

    with _InitCounter() as counter, mock.patch(
            'rekd_mm.engine.hooks.relation_miner_hook.ProgressBar',
            RecordingBar):
        runner = _runner(
            tmp_path,
            max_iters=3,
            miner_hook=dict(init_iter=2, source='dataset'))
        runner.train()
    # The whole 64-image set at iteration 2, in 8 batches with a bar.
    assert counter.calls == [(2, 64)]
    assert len(bars) == 1 and bars[0].completed == bars[0].task_num == 8
    assert '8/8' in bars[0].file.getvalue()
    model = get_ori_model(runner.model)
    assert model.miner.is_initialized
    assert (_history(runner, 'proto_assigned_ratio')[2:] > 0).all()


def test__recluster_interval_reclusters(tmp_path):
    with _InitCounter() as counter:
        runner = _runner(
            tmp_path,
            max_iters=7,
            miner_hook=dict(init_iter=2, recluster_interval=2, by_epoch=False))
        runner.train()
    assert [it for it, _ in counter.calls] == [2, 4, 6]
    # Each re-clustering sees the keys queued so far.
    assert [num for _, num in counter.calls] == [16, 32, 48]
    assert int(get_ori_model(runner.model).miner.last_cluster_iter) == 6


def test__dataset_source_without_loader_config_is_a_clear_error(tmp_path):
    # A Runner built directly (not from a config) has no train_dataloader
    # config for the hook to copy.
    cfg = toy_runner_cfg(
        str(tmp_path),
        max_iters=2,
        miner_hook=dict(init_iter=1, source='dataset'),
        experiment_name=f'miner_hook_{next(_names)}')
    cfg.pop('custom_imports')
    runner = Runner(**cfg)
    with pytest.raises(ValueError, match='init_dataloader'):
        runner.train()
    assert runner.iter == 0
