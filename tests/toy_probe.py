# Copyright (c) rekd_mm contributors. All rights reserved.
"""A tiny mmpretrain linear probe that needs nothing from rekd_mm.

The data are 16 random 16 px RGB PNGs in two class folders (mmpretrain's
``CustomDataset`` and mmcv's ``LoadImageFromFile``), so the probe runs in a
process that never imports rekd_mm. Its backbone is the toy ReKD student of
:mod:`tests.toy_configs` (MobileNetV2 x0.25), strictly frozen as in
``configs/benchmarks/linear_probe``.
"""
import os
import os.path as osp
import pprint
from typing import Optional

import numpy as np

from tests.toy_configs import toy_model_cfg

__all__ = ['write_toy_images', 'toy_probe_cfg', 'write_config']


def write_toy_images(root: str, per_class: int = 8, size: int = 16) -> str:
    """Write ``per_class`` random PNGs into ``root/a`` and ``root/b``.

    Args:
        root (str): The data root (created).
        per_class (int): Images per class. Defaults to 8.
        size (int): Side in pixels. Defaults to 16.

    Returns:
        str: ``root``.
    """
    import cv2
    rng = np.random.default_rng(0)
    for label, name in enumerate(('a', 'b')):
        os.makedirs(osp.join(root, name), exist_ok=True)
        for i in range(per_class):
            # The two classes differ in brightness: learnable, not trivial.
            image = rng.integers(0, 128, (size, size, 3)) + 96 * label
            cv2.imwrite(
                osp.join(root, name, f'{i}.png'), image.astype(np.uint8))
    return root


def toy_probe_cfg(data_root: str,
                  checkpoint: str = '',
                  work_dir: Optional[str] = None,
                  rekd_mm: bool = False,
                  max_epochs: int = 1) -> dict:
    """An mmpretrain-style linear-probe config of the toy student.

    Args:
        data_root (str): A folder from :func:`write_toy_images`.
        checkpoint (str): ``model.backbone.init_cfg.checkpoint`` (prefix
            ``'backbone.'``). Defaults to ``''``.
        work_dir (str, optional): The work directory. Defaults to None.
        rekd_mm (bool): Import rekd_mm and guard the load with
            ``StrictPretrainedCheckHook``, as this project's probe configs
            do. Defaults to False (a plain mmpretrain config).
        max_epochs (int): Epochs (2 iterations each). Defaults to 1.

    Returns:
        dict: The config.
    """
    student = toy_model_cfg()['backbone']
    loader = dict(
        batch_size=8,
        num_workers=0,
        persistent_workers=False,
        collate_fn=dict(type='default_collate'),
        dataset=dict(
            type='CustomDataset',
            data_root=data_root,
            pipeline=[dict(type='LoadImageFromFile'),
                      dict(type='PackInputs')]))
    cfg = dict(
        default_scope='mmpretrain',
        model=dict(
            type='ImageClassifier',
            data_preprocessor=dict(
                type='ClsDataPreprocessor',
                num_classes=2,
                mean=[127.5] * 3,
                std=[64.] * 3),
            backbone=dict(
                student,
                frozen_stages=7,
                norm_eval=True,
                init_cfg=dict(
                    type='Pretrained',
                    checkpoint=checkpoint,
                    prefix='backbone.')),
            neck=dict(type='GlobalAveragePooling'),
            head=dict(
                type='LinearClsHead',
                num_classes=2,
                in_channels=1280,
                loss=dict(type='CrossEntropyLoss'),
                topk=(1, ))),
        train_dataloader=dict(
            loader, sampler=dict(type='DefaultSampler', shuffle=True)),
        val_dataloader=dict(
            loader, sampler=dict(type='DefaultSampler', shuffle=False)),
        val_evaluator=dict(type='Accuracy', topk=(1, )),
        optim_wrapper=dict(
            optimizer=dict(type='SGD', lr=0.1, momentum=0.9, weight_decay=0.),
            paramwise_cfg=dict(
                custom_keys={'backbone': dict(lr_mult=0.0, decay_mult=0.0)})),
        train_cfg=dict(
            type='EpochBasedTrainLoop',
            max_epochs=max_epochs,
            val_interval=max_epochs),
        val_cfg=dict(),
        test_cfg=dict(),
        default_hooks=dict(
            timer=dict(type='IterTimerHook'),
            logger=dict(type='LoggerHook', interval=1),
            param_scheduler=dict(type='ParamSchedulerHook'),
            checkpoint=dict(type='CheckpointHook', interval=max_epochs),
            sampler_seed=dict(type='DistSamplerSeedHook')),
        randomness=dict(seed=0),
        env_cfg=dict(dist_cfg=dict(backend='gloo')),
        log_level='INFO')
    cfg['test_dataloader'] = cfg['val_dataloader']
    cfg['test_evaluator'] = cfg['val_evaluator']
    if work_dir is not None:
        cfg['work_dir'] = work_dir
    if rekd_mm:
        cfg['custom_imports'] = dict(
            imports=['rekd_mm'], allow_failed_imports=False)
        cfg['custom_hooks'] = [
            dict(type='StrictPretrainedCheckHook', modules=['backbone'])
        ]
    return cfg


def write_config(cfg: dict, path: str) -> str:
    """Write ``cfg`` as a Python config file that mmengine reads.

    Args:
        cfg (dict): Plain literals only.
        path (str): The ``.py`` file.

    Returns:
        str: ``path``.
    """
    with open(path, 'w') as f:
        for key, value in cfg.items():
            f.write(f'{key} = {pprint.pformat(value, width=79)}\n')
    return str(path)
