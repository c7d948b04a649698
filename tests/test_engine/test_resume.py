# Copyright (c) rekd_mm contributors. All rights reserved.
"""Exact resume: N iterations straight equal N/2, checkpoint, resume to N."""
import itertools
import os.path as osp

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.runner import Runner
from mmpretrain.utils import get_ori_model

import rekd_mm  # noqa: F401  (registers ReKD; allow-lists checkpoint globals)
from tests.toy_configs import toy_runner_cfg

MAX_ITERS = 8
_names = itertools.count()
_LOGGED = ('loss', 'loss_teacher', 'loss_relation', 'relation_pos_per_anchor',
           'lr')


def _train(work_dir, miner_hook, **kwargs) -> Runner:
    cfg = toy_runner_cfg(
        str(work_dir),
        max_iters=MAX_ITERS,
        miner_hook=miner_hook,
        checkpoint_interval=MAX_ITERS // 2,
        experiment_name=f'resume_{next(_names)}',
        **kwargs)
    runner = Runner.from_cfg(Config(cfg))
    runner.train()
    return runner


def _assert_equal_nested(a, b, path=''):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), path
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for key in a:
            _assert_equal_nested(a[key], b[key], f'{path}.{key}')
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_equal_nested(x, y, f'{path}[{i}]')
    else:
        assert a == b, path


@pytest.mark.parametrize(
    'miner_hook',
    [
        dict(init_iter=2, source='queue'),  # bank restored from checkpoint
        dict(init_iter=6, source='queue'),  # resumed run must initialise it
        dict(init_iter=2, source='dataset'),  # extra data pass before ckpt
    ],
    ids=['init-first-half', 'init-second-half', 'dataset-first-half'])
def test__resume_equals_uninterrupted_training(tmp_path, miner_hook):
    straight = _train(tmp_path / 'straight', miner_hook)
    resumed = _train(
        tmp_path / 'resumed',
        miner_hook,
        resume=True,
        load_from=osp.join(tmp_path, 'straight', f'iter_{MAX_ITERS // 2}.pth'))
    assert resumed.iter == straight.iter == MAX_ITERS

    model_a = get_ori_model(straight.model)
    model_b = get_ori_model(resumed.model)
    assert model_b.miner.is_initialized
    assert int(model_b.miner.last_cluster_iter) == miner_hook['init_iter']
    # Student, teacher, both EMAs, queues, pointers and the bank.
    state_a, state_b = model_a.state_dict(), model_b.state_dict()
    assert state_a.keys() == state_b.keys()
    assert all(v.isfinite().all() for v in state_a.values()
               if v.is_floating_point())
    different = [k for k in state_a if not torch.equal(state_a[k], state_b[k])]
    assert different == []
    _assert_equal_nested(straight.optim_wrapper.state_dict(),
                         resumed.optim_wrapper.state_dict())
    # The logged values of every iteration (the resumed message hub holds
    # the first half from the checkpoint, then its own second half).
    for name in _LOGGED:
        hist_a = straight.message_hub.get_scalar(f'train/{name}').data[0]
        hist_b = resumed.message_hub.get_scalar(f'train/{name}').data[0]
        assert len(hist_a) == len(hist_b) == MAX_ITERS, name
        np.testing.assert_array_equal(hist_a, hist_b, err_msg=name)
    # The mined relations were active in the compared second half.
    assert (straight.message_hub.get_scalar(
        'train/relation_pos_per_anchor').data[0][-2:] > 0).all()


def test__resume_keeps_the_shuffle_salt_of_the_run(tmp_path):
    """A run resumed under another seed still shuffles with the salt of the
    run it resumes (checkpointed), so its keys are those of the
    uninterrupted run."""
    from rekd_mm.models.utils.batch_shuffle import seeded_shuffle_salt
    from tests.toy_configs import toy_model_cfg
    model = toy_model_cfg(
        backbone=dict(
            type='MobileNetV2',
            widen_factor=0.25,
            norm_cfg=dict(type='SplitBN', num_splits=2)))
    hook = dict(init_iter=2, source='queue')
    straight = _train(tmp_path / 'straight', hook, model=model, batch_size=16)
    resumed = _train(
        tmp_path / 'resumed',
        hook,
        model=model,
        batch_size=16,
        seed=1,
        resume=True,
        load_from=osp.join(tmp_path, 'straight', f'iter_{MAX_ITERS // 2}.pth'))
    salt = get_ori_model(straight.model).shuffle_salt
    torch.manual_seed(1)
    assert not torch.equal(seeded_shuffle_salt(), salt)  # seed 1's own
    model_b = get_ori_model(resumed.model)
    assert torch.equal(model_b.shuffle_salt, salt)
    assert torch.equal(
        model_b.shuffle_permutation(16),
        get_ori_model(straight.model).shuffle_permutation(16))
