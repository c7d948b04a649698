# Copyright (c) rekd_mm contributors. All rights reserved.
"""`pkg::` config bases put `_scope_` into collate_fn; importing rekd_mm makes
mmengine's collate functions accept it, so mmpretrain's own MoCo v2 config
is a base that works unmodified."""
import os.path as osp
from functools import partial

import pytest
import torch
from mmengine.config import Config
from mmengine.dataset import default_collate as mmengine_default_collate
from mmengine.registry import FUNCTIONS
from mmengine.runner import Runner
from mmpretrain.utils import get_ori_model

import rekd_mm  # noqa: F401  (registers the collate wrappers)
from rekd_mm.models import ReKD
from tests.toy_configs import toy_dataloader_cfg, toy_model_cfg

MOCOV2_BASE = 'mmpretrain::mocov2/mocov2_resnet50_8xb32-coslr-200e_in1k.py'


@pytest.mark.parametrize('name', ['default_collate', 'pseudo_collate'])
def test_registered_collate_accepts_and_ignores_scope(name):
    samples = [dict(x=torch.full((2, ), float(i))) for i in range(3)]
    collate = FUNCTIONS.get(name)
    # Runner.build_dataloader binds the leftover config keys with partial.
    scoped = partial(collate, _scope_='mmpretrain')(samples)
    plain = collate(samples)
    if name == 'default_collate':
        assert torch.equal(scoped['x'],
                           torch.tensor([[0., 0.], [1., 1.], [2., 2.]]))
        assert torch.equal(scoped['x'], plain['x'])
    else:  # pseudo_collate keeps a list of tensors
        assert len(scoped['x']) == 3
        assert all(torch.equal(a, b) for a, b in zip(scoped['x'], plain['x']))


def test_mmengine_collate_alone_rejects_scope():
    # The failure the wrapper exists for (if mmengine ever accepts `_scope_`
    # itself, the wrapper can go).
    with pytest.raises(TypeError, match='_scope_'):
        partial(mmengine_default_collate, _scope_='mmpretrain')([1, 2])


def _write_rekd_on_mocov2_base(path, work_dir) -> str:
    """A ReKD config that inherits mmpretrain's MoCo v2 config as is and
    only replaces the model, the data set and the budget."""
    loader = toy_dataloader_cfg(batch_size=8, num_samples=32)
    text = f"""
_base_ = {MOCOV2_BASE!r}
custom_imports = dict(imports=['rekd_mm'], allow_failed_imports=False)
work_dir = {str(work_dir)!r}
model = dict(_delete_=True, **{toy_model_cfg()!r})
# The base's collate_fn (and its `_scope_`) and sampler are kept.
train_dataloader = dict(
    batch_size=8, num_workers=0, persistent_workers=False,
    dataset=dict(_delete_=True, **{loader['dataset']!r}))
train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=2)
param_scheduler = [dict(type='ConstantLR', factor=1.0, by_epoch=False)]
custom_hooks = [dict(type='RelationMinerHook', init_iter=1, source='queue')]
default_hooks = dict(
    logger=dict(interval=1), checkpoint=dict(by_epoch=False, interval=2))
log_processor = dict(by_epoch=False)
log_level = 'WARNING'
randomness = dict(seed=0)
"""
    with open(path, 'w') as f:
        f.write(text)
    return str(path)


def test_rekd_on_unmodified_mmpretrain_mocov2_base_trains(tmp_path):
    config = _write_rekd_on_mocov2_base(tmp_path / 'rekd_on_mocov2.py',
                                        tmp_path / 'work')
    cfg = Config.fromfile(config)
    # The situation of the bug: the base's collate_fn carries `_scope_`.
    assert cfg.train_dataloader.collate_fn == dict(
        type='default_collate', _scope_='mmpretrain')
    runner = Runner.from_cfg(cfg)
    runner.train()
    model = get_ori_model(runner.model)
    assert isinstance(model, ReKD)
    assert runner.iter == 2
    # Two batches went through the model: the queues advanced by 2 x 8.
    assert int(model.queue_ptr) == 16
    assert bool(model.miner.is_initialized)
    assert osp.isfile(tmp_path / 'work' / 'iter_2.pth')
