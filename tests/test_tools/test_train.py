# Copyright (c) rekd_mm contributors. All rights reserved.
"""tools/train.py: fail-fast data checks, CPU DDP and resume.

The subprocess tests run the real script, as a user would, on a tiny
budget (a few iterations, batch 8, no dataloader workers).
"""
import os
import os.path as osp
import re
import subprocess
import sys

import pytest
import torch
import torch.distributed as torch_dist
from mmengine.config import Config
from mmpretrain.registry import MODEL_WRAPPERS, MODELS

import rekd_mm  # noqa: F401  (checkpoint safe globals for torch.load)
from rekd_mm.utils import (CPUDistributedDataParallel, DataPathError,
                           check_data_roots, revert_sync_bn_cfg,
                           setup_cpu_distributed)
from rekd_mm.utils.preflight import default_dataloader_keys

REPO_ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
TRAIN = osp.join(REPO_ROOT, 'tools', 'train.py')
DEMO = osp.join(REPO_ROOT, 'configs',
                'rekd_mobilenet-v2-t-resnet18_1xb64-400i_fashion-mnist.py')
# A few iterations of the demo at batch 8; the bank is clustered from the
# 2 x 16 teacher keys queued by iteration 2.
TINY = [
    'model.queue_len=256', 'model.miner.num_prototypes=8',
    'custom_hooks.0.init_iter=2', 'train_dataloader.batch_size=8',
    'train_dataloader.num_workers=0',
    'train_dataloader.persistent_workers=False',
    'default_hooks.logger.interval=1'
]


def _run(args, cwd=REPO_ROOT, timeout=120):
    # CUDA hidden: the CPU path (gloo DDP) is tested on any machine.
    env = dict(
        os.environ,
        OMP_NUM_THREADS='1',
        PYTHONWARNINGS='ignore',
        CUDA_VISIBLE_DEVICES='')
    return subprocess.run([sys.executable, *args],
                          cwd=cwd,
                          env=env,
                          capture_output=True,
                          text=True,
                          timeout=timeout)


def _folder_dataset(**dataset):
    return Config(
        dict(
            train_dataloader=dict(
                dataset=dict(type='CustomDataset', **dataset))))


# ---------------------------------------------------------------- preflight
def test_missing_imagenet_stops_before_the_runner(tmp_path):
    # From an empty directory the config's relative 'data/imagenet/' cannot
    # exist, whatever this machine holds.
    work_dir = tmp_path / 'work'
    config = osp.join(REPO_ROOT, 'configs', 'rekd_mbv2_r50_200e.py')
    # Fails fast: only imports and the config are read (a few seconds).
    result = _run([TRAIN, config, '--work-dir',
                   str(work_dir)],
                  cwd=tmp_path,
                  timeout=60)
    assert result.returncode != 0
    assert ("train_dataloader.dataset.data_root='data/imagenet/' does not "
            'exist') in result.stderr
    assert '--cfg-options train_dataloader.dataset.data_root=' in \
        result.stderr
    assert 'Traceback' not in result.stderr
    # The Runner was never built: it would have created the work dir.
    assert not work_dir.exists()


def test_empty_data_root_is_reported(tmp_path):
    (tmp_path / 'empty').mkdir()
    cfg = _folder_dataset(data_root=str(tmp_path / 'empty'))
    with pytest.raises(DataPathError, match='is an empty directory'):
        check_data_roots(cfg)


def test_missing_prefix_and_ann_file_name_their_keys(tmp_path):
    (tmp_path / 'root' / 'train').mkdir(parents=True)
    (tmp_path / 'root' / 'train' / 'a.jpg').touch()
    cfg = _folder_dataset(
        data_root=str(tmp_path / 'root'),
        data_prefix=dict(img_path='val'),
        ann_file='meta/val.txt')
    with pytest.raises(DataPathError) as err:
        check_data_roots(cfg)
    message = str(err.value)
    assert "train_dataloader.dataset.data_prefix.img_path='val'" in message
    assert "train_dataloader.dataset.ann_file='meta/val.txt'" in message
    assert 'train_dataloader.dataset.data_root' not in message

    # The same root with the folder that exists passes.
    check_data_roots(
        _folder_dataset(data_root=str(tmp_path / 'root'), data_prefix='train'))


def test_imagenet_split_folder_is_checked(tmp_path):
    (tmp_path / 'val').mkdir()
    (tmp_path / 'val' / 'x').mkdir()
    cfg = Config(
        dict(
            train_dataloader=dict(
                dataset=dict(
                    type='ImageNet', data_root=str(tmp_path), split='train'))))
    with pytest.raises(DataPathError, match="no usable 'train' folder"):
        check_data_roots(cfg)


def test_wrapped_datasets_and_hook_loaders_are_checked(tmp_path):
    (tmp_path / 'ok').mkdir()
    (tmp_path / 'ok' / 'a.jpg').touch()
    missing = str(tmp_path / 'missing')
    cfg = Config(
        dict(
            train_dataloader=dict(
                dataset=dict(
                    type='ConcatDataset',
                    datasets=[
                        dict(
                            type='CustomDataset',
                            data_root=str(tmp_path / 'ok')),
                        dict(
                            type='RepeatDataset',
                            times=2,
                            dataset=dict(
                                type='CustomDataset', data_root=missing))
                    ])),
            custom_hooks=[
                dict(
                    type='RelationMinerHook',
                    source='dataset',
                    init_dataloader=dict(
                        dataset=dict(type='CustomDataset', data_root=missing)))
            ]))
    assert default_dataloader_keys(cfg) == [
        'train_dataloader', 'custom_hooks.0.init_dataloader'
    ]
    with pytest.raises(DataPathError) as err:
        check_data_roots(cfg)
    message = str(err.value)
    assert 'train_dataloader.dataset.datasets.1.dataset.data_root' in message
    assert 'custom_hooks.0.init_dataloader.dataset.data_root' in message
    assert 'datasets.0' not in message


def test_downloading_datasets_and_disabled_validation_are_skipped(tmp_path):
    missing = str(tmp_path / 'missing')
    # FashionMNIST downloads by default: a missing root is expected.
    check_data_roots(
        Config(
            dict(
                train_dataloader=dict(
                    dataset=dict(type='FashionMNIST', data_root=missing)))))
    with pytest.raises(DataPathError):
        check_data_roots(
            Config(
                dict(
                    train_dataloader=dict(
                        dataset=dict(
                            type='FashionMNIST',
                            data_root=missing,
                            download=False)))))
    # val_dataloader is only built when validation is on.
    cfg = Config(
        dict(
            train_dataloader=dict(
                dataset=dict(type='FashionMNIST', data_root=missing)),
            val_cfg=None,
            val_dataloader=dict(
                dataset=dict(type='CustomDataset', data_root=missing))))
    check_data_roots(cfg)
    cfg.val_cfg = dict()
    with pytest.raises(DataPathError, match='val_dataloader.dataset'):
        check_data_roots(cfg)


# ---------------------------------------------------------------- dist set-up
def test_revert_sync_bn_cfg_changes_only_sync_bn():
    model = dict(
        backbone=dict(norm_cfg=dict(type='SyncBN', requires_grad=True)),
        neck=dict(norm_cfg=dict(type='BN')),
        blocks=[
            dict(norm_cfg=dict(type='MMSyncBN')),
            dict(act_cfg=dict(type='ReLU'))
        ])
    assert revert_sync_bn_cfg(model) == 2
    # mmengine's _BatchNormXd, any input dimension (tests/test_utils/
    # test_dist.py).
    assert model['backbone']['norm_cfg'] == dict(
        type='mmpretrain.BNXd', requires_grad=True)
    assert model['blocks'][0]['norm_cfg']['type'] == 'mmpretrain.BNXd'
    assert model['blocks'][1]['act_cfg']['type'] == 'ReLU'


def test_setup_cpu_distributed_leaves_single_process_alone():
    cfg = Config(
        dict(
            launcher='none',
            model=dict(norm_cfg=dict(type='SyncBN')),
            env_cfg=dict(dist_cfg=dict(backend='nccl'))))
    assert setup_cpu_distributed(cfg) is False
    # The Runner reverts SyncBN itself when not distributed.
    assert cfg.model.norm_cfg.type == 'SyncBN'
    assert cfg.env_cfg.dist_cfg.backend == 'nccl'
    assert cfg.get('model_wrapper_cfg') is None


def test_cpu_ddp_wrapper_reverts_default_sync_bn():
    # NonLinearNeck's default norm_cfg is SyncBN: the config rewrite cannot
    # see it, and torch's DDP refuses SyncBatchNorm on CPU.
    neck = MODELS.build(
        dict(
            type='NonLinearNeck',
            in_channels=8,
            hid_channels=8,
            out_channels=4,
            with_avg_pool=True))
    assert any(isinstance(m, torch.nn.SyncBatchNorm) for m in neck.modules())
    torch_dist.init_process_group(
        'gloo', init_method='tcp://127.0.0.1:29631', rank=0, world_size=1)
    try:
        wrapped = MODEL_WRAPPERS.build(
            dict(type='CPUDistributedDataParallel', module=neck))
        assert isinstance(wrapped, CPUDistributedDataParallel)
        assert wrapped.device_ids is None
        norms = [
            m for m in wrapped.module.modules()
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
        ]
        assert len(norms) == 2 and not any(
            isinstance(m, torch.nn.SyncBatchNorm) for m in norms)
        out = wrapped([torch.randn(4, 8, 2, 2)])[0]
        assert out.shape == (4, 4)
    finally:
        torch_dist.destroy_process_group()


def test_cpu_ddp_two_processes_train_and_checkpoint(tmp_path):
    work_dir = tmp_path / 'work'
    result = _run([
        '-m',
        'torch.distributed.run',
        '--standalone',
        '--nproc_per_node=2',
        TRAIN,
        DEMO,
        '--launcher',
        'pytorch',
        '--work-dir',
        str(work_dir),
        '--cfg-options',
        'train_cfg.max_iters=4',
        *TINY,
        # A GPU-only layer type: converted to BN with a warning on CPU.
        'model.teacher_backbone.norm_cfg.type=SyncBN'
    ])
    assert result.returncode == 0, result.stdout[-3000:] + \
        result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert 'SyncBN norm config(s) in the model were changed to BN' in output
    assert re.search(r'Distributed training: True', output)
    ckpt = torch.load(work_dir / 'iter_4.pth', map_location='cpu')
    state = ckpt['state_dict']
    assert ckpt['meta']['iter'] == 4
    # Keys are gathered from both ranks before they are enqueued: 4
    # iterations x 2 ranks x 8 images (one process would have written 32).
    assert int(state['queue_ptr']) == 4 * 2 * 8
    assert bool(state['miner.initialized'])
    # The student is saved unwrapped (no DDP 'module.' prefix).
    assert any(key.startswith('backbone.') for key in state)


def test_resume_continues_from_the_checkpoint(tmp_path):
    work_dir = tmp_path / 'work'
    common = [TRAIN, DEMO, '--work-dir', str(work_dir)]
    first = _run(common + ['--cfg-options', 'train_cfg.max_iters=3', *TINY])
    assert first.returncode == 0, first.stderr[-3000:]
    # --resume (auto) under torch.load(weights_only=True): needs the safe
    # globals that importing rekd_mm registers.
    second = _run(
        common + ['--resume', '--cfg-options', 'train_cfg.max_iters=4', *TINY])
    assert second.returncode == 0, second.stderr[-3000:]
    output = second.stdout + second.stderr
    assert 'resumed' in output.lower()
    assert 'Iter(train) [4/4]' in output
    assert 'Iter(train) [1/4]' not in output
    before = torch.load(work_dir / 'iter_3.pth', map_location='cpu')
    after = torch.load(work_dir / 'iter_4.pth', map_location='cpu')
    assert after['meta']['iter'] == 4
    # One more global batch of 8 was enqueued after the restored pointer.
    assert int(after['state_dict']['queue_ptr']) == \
        int(before['state_dict']['queue_ptr']) + 8
    # The bank initialised before the checkpoint is restored, not redone.
    assert bool(after['state_dict']['miner.initialized'])
    assert int(after['state_dict']['miner.last_cluster_iter']) == int(
        before['state_dict']['miner.last_cluster_iter'])
