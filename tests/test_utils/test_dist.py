# Copyright (c) rekd_mm contributors. All rights reserved.
"""SyncBN configs rewritten for CPU processes (``revert_sync_bn_cfg``).

An inherited MoCo v3 / SimCLR / BYOL config states
``norm_cfg=dict(type='SyncBN')`` in its ``NonLinearNeck``, whose norm layers
see (N, C) features. The rewrite must give a layer that runs there, as
mmengine's own module-level ``revert_sync_batchnorm`` does.
"""
import copy

import pytest
import torch
from mmengine.model.utils import _BatchNormXd
from mmengine.registry import DefaultScope
from mmpretrain.models.necks import NonLinearNeck

from rekd_mm.utils import revert_sync_bn_cfg

NECK = dict(
    in_channels=8,
    hid_channels=16,
    out_channels=4,
    num_layers=2,
    with_avg_pool=False,
    norm_cfg=dict(type='SyncBN'))


def _build_neck(cfg: dict, scope: str) -> NonLinearNeck:
    # The neck resolves its norm type in the default scope's registry.
    with DefaultScope.overwrite_default_scope(scope):
        return NonLinearNeck(**copy.deepcopy(cfg))


@pytest.mark.parametrize('scope', ['mmengine', 'mmpretrain'])
def test__rewritten_sync_bn_neck_trains_on_2d_features_on_cpu(scope):
    cfg = copy.deepcopy(NECK)
    assert revert_sync_bn_cfg(cfg) == 1
    neck = _build_neck(cfg, scope).train()
    norms = [m for m in neck.modules() if isinstance(m, _BatchNormXd)]
    assert len(norms) == 2  # bn0 and bn1 (no last BN by default: bn2)
    assert not any(
        isinstance(m, torch.nn.SyncBatchNorm) for m in neck.modules())

    torch.manual_seed(0)
    feats = torch.randn(6, 8) * 3 + 1
    out = neck((feats, ))[0]
    assert out.shape == (6, 4)
    # Batch statistics were used and accumulated: the first norm layer's
    # running mean moved from 0 by momentum x the batch mean of its input.
    bn0 = neck.bn0
    assert int(bn0.num_batches_tracked) == 1
    with torch.no_grad():
        expected = 0.1 * neck.fc0(feats).mean(0)
    torch.testing.assert_close(bn0.running_mean, expected)
    assert all(int(m.num_batches_tracked) == 1 for m in norms)


def test__rewritten_neck_keeps_the_sync_bn_state_dict_keys():
    # Checkpoints of the GPU run load into the CPU-built model and back.
    cfg = copy.deepcopy(NECK)
    revert_sync_bn_cfg(cfg)
    cpu = _build_neck(cfg, 'mmpretrain')
    gpu = _build_neck(NECK, 'mmpretrain')
    assert any(isinstance(m, torch.nn.SyncBatchNorm) for m in gpu.modules())
    cpu_state, gpu_state = cpu.state_dict(), gpu.state_dict()
    assert list(cpu_state) == list(gpu_state)
    assert all(cpu_state[k].shape == gpu_state[k].shape for k in cpu_state)
    cpu.load_state_dict(gpu_state)


def test__plain_bn_would_refuse_the_neck_features():
    # What the rewrite to 'BN' (nn.BatchNorm2d) used to give.
    neck = _build_neck(dict(NECK, norm_cfg=dict(type='BN')), 'mmpretrain')
    with pytest.raises(ValueError, match='expected 4D input'):
        neck((torch.randn(6, 8), ))


def test__only_sync_bn_configs_change_and_lose_sync_only_arguments():
    model = dict(
        backbone=dict(norm_cfg=dict(type='SyncBN', requires_grad=False)),
        neck=dict(norm_cfg=dict(type='BN', momentum=0.2)),
        blocks=[
            dict(norm_cfg=dict(type='MMSyncBN', stats_mode='N', group=None)),
            dict(norm_cfg=dict(type='GN', num_groups=2))
        ])
    assert revert_sync_bn_cfg(model) == 2
    assert model['backbone']['norm_cfg'] == dict(
        type='mmpretrain.BNXd', requires_grad=False)
    assert model['blocks'][0]['norm_cfg'] == dict(type='mmpretrain.BNXd')
    assert model['neck']['norm_cfg'] == dict(type='BN', momentum=0.2)
    assert model['blocks'][1]['norm_cfg'] == dict(type='GN', num_groups=2)
    assert revert_sync_bn_cfg(model) == 0  # idempotent
