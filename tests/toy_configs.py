# Copyright (c) rekd_mm contributors. All rights reserved.
"""Tiny ReKD configs shared by the tests.

Everything is sized for a busy 2-core CPU: 16 px crops of a 64-image
Fashion-MNIST subset, a MobileNetV2 (x0.25) student and a thin ResNet-18
teacher (heterogeneous, as in the method), 16-dim embeddings, a 64-slot queue
and 4 prototypes. One training iteration takes about 30 ms.
"""
import copy
import os.path as osp
from typing import Optional

__all__ = [
    'REPO_ROOT', 'FASHION_MNIST_ROOT', 'toy_model_cfg', 'toy_dataloader_cfg',
    'toy_knn_loader_cfg', 'toy_runner_cfg'
]

REPO_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
FASHION_MNIST_ROOT = osp.join(REPO_ROOT, 'data', 'fashion_mnist')


def toy_model_cfg(feat_dim: int = 16,
                  queue_len: int = 64,
                  num_prototypes: int = 4,
                  threshold: float = 0.0,
                  max_positives=None,
                  **overrides) -> dict:
    """A tiny ReKD model config.

    Args:
        feat_dim (int): Embedding dimension D. Defaults to 16.
        queue_len (int): Queue length L. Defaults to 64.
        num_prototypes (int): K. Defaults to 4.
        threshold (float): Θ. Defaults to 0.0, which keeps relations mined
            with the untrained toy teacher.
        max_positives (int, optional): ``miner.max_positives`` when given.
        **overrides: Replace top-level keys of the model config.

    Returns:
        dict: The ``model`` config.
    """
    cfg = dict(
        type='ReKD',
        queue_len=queue_len,
        feat_dim=feat_dim,
        momentum=0.01,
        data_preprocessor=dict(
            type='SelfSupDataPreprocessor',
            mean=[72.94, 72.94, 72.94],
            std=[90.02, 90.02, 90.02],
            to_rgb=False),
        backbone=dict(type='MobileNetV2', widen_factor=0.25),
        neck=dict(
            type='MoCoV2Neck',
            in_channels=1280,
            hid_channels=32,
            out_channels=feat_dim,
            with_avg_pool=True),
        head=dict(type='RelationContrastiveHead', temperature=0.2),
        teacher_backbone=dict(
            type='ResNet', depth=18, stem_channels=16, base_channels=16),
        teacher_neck=dict(
            type='MoCoV2Neck',
            in_channels=128,
            hid_channels=32,
            out_channels=feat_dim,
            with_avg_pool=True),
        teacher_head=dict(
            type='ContrastiveHead',
            loss=dict(type='CrossEntropyLoss'),
            temperature=0.2),
        miner=dict(
            num_prototypes=num_prototypes,
            threshold=threshold,
            momentum=0.9,
            queue_refresh_interval=2))
    if max_positives is not None:
        cfg['miner']['max_positives'] = max_positives
    cfg.update(copy.deepcopy(overrides))
    return cfg


def toy_dataloader_cfg(batch_size: int = 8,
                       num_samples: int = 64,
                       shuffle: bool = True) -> dict:
    """A two-view (MoCo v2-style) Fashion-MNIST dataloader at 16 px.

    Args:
        batch_size (int): Batch size per process. Defaults to 8.
        num_samples (int): First samples of the training split kept.
            Defaults to 64.
        shuffle (bool): Whether the sampler shuffles. Defaults to True.

    Returns:
        dict: The ``train_dataloader`` config (``num_workers=0``, so the
        augmentations run in the main process and follow its seeded RNGs).
    """
    view_pipeline = [
        dict(
            type='RandomResizedCrop',
            scale=16,
            crop_ratio_range=(0.2, 1.),
            backend='pillow'),
        dict(type='RandomFlip', prob=0.5),
    ]
    return dict(
        batch_size=batch_size,
        num_workers=0,
        drop_last=True,
        sampler=dict(type='DefaultSampler', shuffle=shuffle),
        collate_fn=dict(type='default_collate'),
        dataset=dict(
            type='FashionMNIST',
            data_root=FASHION_MNIST_ROOT,
            split='train',
            download=False,
            indices=num_samples,
            pipeline=[
                dict(type='GrayToRGB'),
                dict(
                    type='MultiView', num_views=2, transforms=[view_pipeline]),
                dict(type='PackInputs')
            ]))


def toy_knn_loader_cfg(split: str = 'test',
                       num_samples: Optional[int] = None,
                       batch_size: int = 16) -> dict:
    """A labelled, un-augmented Fashion-MNIST dataloader at 16 px, as the
    ``knn_train_dataloader`` / ``knn_val_dataloader`` of a config.

    Args:
        split (str): ``'train'`` or ``'test'``. Defaults to ``'test'``.
        num_samples (int, optional): First samples of the split kept.
            Defaults to None (all).
        batch_size (int): Batch size. Defaults to 16.

    Returns:
        dict: The dataloader config (unshuffled, ``num_workers=0``).
    """
    dataset = dict(
        type='FashionMNIST',
        data_root=FASHION_MNIST_ROOT,
        split=split,
        test_mode=split == 'test',  # mmpretrain's MNIST reads test_mode
        download=False,
        pipeline=[
            dict(type='GrayToRGB'),
            dict(type='Resize', scale=16, backend='pillow'),
            dict(type='PackInputs')
        ])
    if num_samples is not None:
        dataset['indices'] = num_samples
    return dict(
        batch_size=batch_size,
        num_workers=0,
        sampler=dict(type='DefaultSampler', shuffle=False),
        collate_fn=dict(type='default_collate'),
        dataset=dataset)


def toy_runner_cfg(work_dir: str,
                   max_iters: int = 6,
                   batch_size: int = 8,
                   num_samples: int = 64,
                   miner_hook: Optional[dict] = None,
                   checkpoint_interval: Optional[int] = None,
                   seed: int = 0,
                   model: Optional[dict] = None,
                   **overrides) -> dict:
    """A complete Runner config training the toy ReKD.

    Build it with ``Runner.from_cfg(Config(cfg))`` (the miner hook reads
    ``runner.cfg.train_dataloader`` for ``source='dataset'``).

    Args:
        work_dir (str): The work directory.
        max_iters (int): Iterations of the ``IterBasedTrainLoop``.
            Defaults to 6.
        batch_size (int): Batch size per process. Defaults to 8.
        num_samples (int): Size of the Fashion-MNIST subset. Defaults to 64.
        miner_hook (dict, optional): Arguments of ``RelationMinerHook``;
            None leaves the hook out. Defaults to None.
        checkpoint_interval (int, optional): Save a checkpoint every this
            many iterations (and at the end). Defaults to None (no
            checkpoint).
        seed (int): Random seed (deterministic mode). Defaults to 0.
        model (dict, optional): Model config. Defaults to
            :func:`toy_model_cfg`.
        **overrides: Replace top-level keys of the runner config.

    Returns:
        dict: The runner config.
    """
    custom_hooks = []
    if miner_hook is not None:
        custom_hooks.append(dict(type='RelationMinerHook', **miner_hook))
    checkpoint = dict(type='CheckpointHook', by_epoch=False,
                      interval=checkpoint_interval) if checkpoint_interval \
        else None
    cfg = dict(
        default_scope='mmpretrain',
        custom_imports=dict(imports=['rekd_mm'], allow_failed_imports=False),
        work_dir=work_dir,
        model=model if model is not None else toy_model_cfg(),
        train_dataloader=toy_dataloader_cfg(batch_size, num_samples),
        train_cfg=dict(type='IterBasedTrainLoop', max_iters=max_iters),
        optim_wrapper=dict(
            type='OptimWrapper',
            optimizer=dict(
                type='SGD', lr=0.01, momentum=0.9, weight_decay=1e-4)),
        param_scheduler=[
            dict(
                type='CosineAnnealingLR',
                T_max=max_iters,
                by_epoch=False,
                begin=0,
                end=max_iters)
        ],
        custom_hooks=custom_hooks,
        default_hooks=dict(
            timer=dict(type='IterTimerHook'),
            logger=dict(type='LoggerHook', interval=1),
            param_scheduler=dict(type='ParamSchedulerHook'),
            checkpoint=checkpoint,
            sampler_seed=dict(type='DistSamplerSeedHook')),
        log_processor=dict(by_epoch=False, window_size=1),
        log_level='WARNING',
        randomness=dict(seed=seed, deterministic=True),
        env_cfg=dict(cudnn_benchmark=False, dist_cfg=dict(backend='gloo')))
    cfg.update(copy.deepcopy(overrides))
    return cfg
