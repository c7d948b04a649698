# Fashion-MNIST (Debian's dataset-fashion-mnist, unpacked by
# tools/setup_env.sh into data/fashion_mnist) with the MoCo v2 augmentations at
# 32 px, CPU-friendly.
dataset_type = 'FashionMNIST'
data_root = 'data/fashion_mnist'
# Fashion-MNIST mean/std (grey, repeated to three channels).
data_preprocessor = dict(
    type='SelfSupDataPreprocessor',
    mean=[72.94, 72.94, 72.94],
    std=[90.02, 90.02, 90.02],
    to_rgb=False)

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
    dict(type='RandomFlip', prob=0.5),
]

train_pipeline = [
    dict(type='GrayToRGB'),
    dict(type='MultiView', num_views=2, transforms=[view_pipeline]),
    dict(type='PackInputs')
]
# One view of the same augmentations, labelled: the training pipeline of
# the supervised reference (configs/benchmarks/supervised/), so that it
# follows any change of view_pipeline above.
single_view_train_pipeline = [
    dict(type='GrayToRGB'), *view_pipeline,
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
        split='train',
        download=False,
        pipeline=train_pipeline))

# Labelled splits for kNN evaluation (no augmentation), used by
# tools/knn_eval.py and the demo.
test_pipeline = [
    dict(type='GrayToRGB'),
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
        split='train',
        download=False,
        pipeline=test_pipeline))
knn_val_dataloader = dict(
    batch_size=256,
    num_workers=2,
    sampler=dict(type='DefaultSampler', shuffle=False),
    collate_fn=dict(type='default_collate'),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        split='test',
        # mmpretrain 1.2's MNIST datasets pick the file from test_mode, not
        # from split: without it this would be the training set.
        test_mode=True,
        download=False,
        pipeline=test_pipeline))
