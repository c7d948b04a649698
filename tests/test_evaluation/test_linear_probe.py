# Copyright (c) rekd_mm contributors. All rights reserved.
"""Linear-probe configs: a strictly frozen backbone loaded from a ReKD
checkpoint, and a load that does not fit fails before training."""
import glob
import os.path as osp

import pytest
import torch
import torch.nn as nn
from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.optim import build_optim_wrapper
from mmengine.registry import init_default_scope
from mmengine.runner import Runner
from mmpretrain.registry import MODELS
from mmpretrain.utils import get_ori_model

import rekd_mm  # noqa: F401
from rekd_mm.utils import PretrainedMismatchError
from tests.toy_configs import FASHION_MNIST_ROOT, REPO_ROOT

PROBE_DIR = osp.join(REPO_ROOT, 'configs', 'benchmarks', 'linear_probe')
FMNIST_PROBE = osp.join(
    PROBE_DIR, 'mobilenet-v2_1xb256-linear-coslr-10e_fashion-mnist.py')
DEMO_CONFIG = osp.join(
    REPO_ROOT, 'configs',
    'rekd_mobilenet-v2-t-resnet18_1xb64-400i_fashion-mnist.py')


@pytest.fixture(scope='module')
def rekd_checkpoint(tmp_path_factory):
    """A checkpoint of the demo's ReKD model whose student BN statistics are
    not the defaults, so that "unchanged" and "loaded" can be told apart."""
    init_default_scope('mmpretrain')
    torch.manual_seed(0)
    model = MODELS.build(Config.fromfile(DEMO_CONFIG).model)
    g = torch.Generator().manual_seed(1)
    for module in model.backbone.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.normal_(0, 0.1, generator=g)
            module.running_var.uniform_(0.5, 2.0, generator=g)
            module.num_batches_tracked.fill_(7)
    path = str(tmp_path_factory.mktemp('ckpt') / 'rekd.pth')
    torch.save(dict(meta=dict(iter=1), state_dict=model.state_dict()), path)
    return path, {k: v.clone() for k, v in model.state_dict().items()}


def _probe_cfg(work_dir, checkpoint, prefix='backbone.') -> Config:
    cfg = Config.fromfile(FMNIST_PROBE)
    cfg.merge_from_dict({
        'work_dir': str(work_dir),
        'model.backbone.init_cfg.checkpoint': checkpoint,
        'model.backbone.init_cfg.prefix': prefix,
        'train_dataloader.batch_size': 8,
        'train_dataloader.num_workers': 0,
        'train_dataloader.dataset.data_root': FASHION_MNIST_ROOT,
        'train_dataloader.dataset.indices': 24,
        'val_dataloader.batch_size': 8,
        'val_dataloader.num_workers': 0,
        'val_dataloader.dataset.data_root': FASHION_MNIST_ROOT,
        'val_dataloader.dataset.indices': 8,
        'train_cfg.max_epochs': 1,
        'param_scheduler.0.T_max': 1,
        'param_scheduler.0.end': 1,
        'default_hooks.checkpoint': None,
        'default_hooks.logger.interval': 1,
        'log_level': 'WARNING',
    })
    cfg.test_dataloader = cfg.val_dataloader
    return cfg


class _HeadRecorder(Hook):
    """Keep the head's weights as they are when training starts."""

    def before_train(self, runner):
        self.head = {
            k: v.clone()
            for k, v in get_ori_model(runner.model).head.state_dict().items()
        }


def test__probe_keeps_the_backbone_and_its_bn_stats_and_trains_the_head(
        tmp_path, rekd_checkpoint):
    path, ckpt_state = rekd_checkpoint
    runner = Runner.from_cfg(_probe_cfg(tmp_path, path))
    recorder = _HeadRecorder()
    runner.register_hook(recorder)
    runner.train()
    model = get_ori_model(runner.model)

    assert runner.iter == 3  # 24 samples, batch 8
    backbone = model.backbone.state_dict()
    # Every backbone tensor (weights, BN running stats, step counters) is
    # the checkpoint's 'backbone.' tensor, bit for bit, after training.
    assert set(backbone) == {
        k[len('backbone.'):]
        for k in ckpt_state if k.startswith('backbone.')
    }
    changed = [
        k for k, v in backbone.items()
        if not torch.equal(v, ckpt_state['backbone.' + k])
    ]
    assert changed == []
    # The final 1x1 conv is not reached by frozen_stages (it is trainable):
    # only lr_mult=0 kept it.
    assert model.backbone.conv2.conv.weight.requires_grad
    # The linear head was trained.
    head = model.head.state_dict()
    assert not torch.equal(head['fc.weight'], recorder.head['fc.weight'])
    assert 'val/accuracy/top1' in runner.message_hub.log_scalars


def test__probe_fails_before_training_when_the_prefix_matches_nothing(
        tmp_path, rekd_checkpoint):
    path, _ = rekd_checkpoint
    # 'teacher.backbone.' holds a ResNet-18: no key fits MobileNetV2.
    runner = Runner.from_cfg(
        _probe_cfg(tmp_path, path, prefix='teacher.backbone.'))
    with pytest.raises(PretrainedMismatchError) as err:
        runner.train()
    message = str(err.value)
    assert 'matches 0 of' in message
    assert "'teacher.backbone.conv1.conv.weight'" in message  # expected
    assert "'teacher.backbone.conv1.weight'" in message  # a ResNet key
    assert "'backbone.'" in message  # where the student is
    assert runner.iter == 0


def test__probe_fails_clearly_without_a_checkpoint(tmp_path):
    runner = Runner.from_cfg(_probe_cfg(tmp_path, ''))
    with pytest.raises(
            ValueError, match='model.backbone.init_cfg.checkpoint=PATH'):
        runner.train()


@pytest.mark.parametrize(
    'config', sorted(glob.glob(osp.join(PROBE_DIR, '*.py'))), ids=osp.basename)
def test__every_probe_config_freezes_its_backbone(config):
    cfg = Config.fromfile(config)
    init_default_scope('mmpretrain')
    model = MODELS.build(cfg.model)
    model.train()
    for split in ('train', 'val', 'test'):
        # A leftover `_scope_`/`_delete_` would reach default_collate.
        assert dict(cfg[f'{split}_dataloader'].collate_fn) == dict(
            type='default_collate')
    init = cfg.model.backbone.init_cfg
    assert init.type == 'Pretrained' and init.prefix == 'backbone.'
    assert any(h.type == 'StrictPretrainedCheckHook' for h in cfg.custom_hooks)
    bns = [
        m for m in model.backbone.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
    ]
    assert bns and not any(m.training for m in bns)
    optim = build_optim_wrapper(model, cfg.optim_wrapper)
    backbone_params = {id(p) for p in model.backbone.parameters()}
    for group in optim.optimizer.param_groups:
        if any(id(p) in backbone_params for p in group['params']):
            assert group['lr'] == 0 and group['weight_decay'] == 0
        else:
            assert group['lr'] > 0
    head_out = cfg.model.head.in_channels
    feats = model.extract_feat(torch.zeros(2, 3, 64, 64))
    assert feats[-1].shape == (2, head_out)
