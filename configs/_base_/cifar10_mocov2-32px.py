# CIFAR-10 as image folders (``<split>/<class>/<n>.jpg``, read by mmpretrain's
# CustomDataset) with the MoCo v2 augmentations at 32 px, CPU-friendly.
# ``data_root`` is relative to the repository root; override it with
# --cfg-options train_dataloader.dataset.data_root=... (and the knn_* ones).
dataset_type = 'CustomDataset'
data_root = '../shared/data/cifar10'
# CIFAR-10 channel mean/std (RGB, 0-255).
data_preprocessor = dict(
    type='SelfSupDataPreprocessor',
    mean=[125.307, 122.961, 113.8575],
    std=[51.5865, 50.847, 51.255],
    to_rgb=True)

# MoCo v2's view pipeline without GaussianBlur: at 32 px a blur erases most of
# the image (the usual CIFAR recipe of SimCLR / MoCo v2 re-implementations).
view_pipeline = [
    dict(
        type='RandomResizedCrop',
        scale=32,
        crop_ratio_range=(0.2, 1.),
        backend='pillow'),
    dict(
        type='RandomApply',
        transforms=[
            dict(
                type='ColorJitter',
                brightness=0.4,
                contrast=0.4,
                saturation=0.4,
                hue=0.1)
        ],
        prob=0.8),
    dict(
        type='RandomGrayscale',
        prob=0.2,
        keep_channels=True,
        channel_weights=(0.114, 0.587, 0.2989)),
    dict(type='RandomFlip', prob=0.5),
]

train_pipeline = [
    dict(type='SafeLoadImageFromFile'),
    dict(type='MultiView', num_views=2, transforms=[view_pipeline]),
    dict(type='PackInputs')
]
# One view of the same augmentations, labelled: the training pipeline of
# the supervised reference (configs/benchmarks/supervised/), so that it
# follows any change of view_pipeline above.
single_view_train_pipeline = [
    dict(type='SafeLoadImageFromFile'), *view_pipeline,
    dict(type='PackInputs')
]

train_dataloader = dict(
    batch_size=64,
    num_workers=2,
    drop_last=True,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=True),
    collate_fn=dict(type='default_collate'),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        data_prefix='train',
        pipeline=train_pipeline))

# Labelled splits for kNN evaluation (no augmentation), used by
# tools/knn_eval.py and the demo.
test_pipeline = [
    dict(type='SafeLoadImageFromFile'),
    dict(type='Resize', scale=32, backend='pillow'),
    dict(type='PackInputs')
]
knn_train_dataloader = dict(
    batch_size=256,
    num_workers=2,
    sampler=dict(type='DefaultSampler', shuffle=False),
    collate_fn=dict(type='default_collate'),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        data_prefix='train',
        pipeline=test_pipeline))
knn_val_dataloader = dict(
    batch_size=256,
    num_workers=2,
    sampler=dict(type='DefaultSampler', shuffle=False),
    collate_fn=dict(type='default_collate'),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        data_prefix='test',
        pipeline=test_pipeline))
