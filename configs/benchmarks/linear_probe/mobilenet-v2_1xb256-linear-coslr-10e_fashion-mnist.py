# Linear probe of the demo's ReKD MobileNetV2 student on Fashion-MNIST at
# 32 px, CPU-friendly (the frozen backbone only runs forward; about 80 s per
# epoch, validation included, on one thread). One linear layer on the
# globally pooled and standardised 1280-channel last stage; the backbone is
# strictly frozen.
#
# Usage (from the repository root):
#   python tools/train.py CONFIG \
#       --cfg-options model.backbone.init_cfg.checkpoint=<ReKD checkpoint>
# e.g. the demo's work_dirs/demo/iter_400.pth.
_base_ = 'mmpretrain::_base_/default_runtime.py'
custom_imports = dict(imports=['rekd_mm'], allow_failed_imports=False)
default_scope = 'mmpretrain'

model = dict(
    type='ImageClassifier',
    # The pretraining's normalisation
    # (configs/_base_/fashion-mnist_mocov2-32px.py).
    data_preprocessor=dict(
        type='ClsDataPreprocessor',
        num_classes=10,
        mean=[72.94, 72.94, 72.94],
        std=[90.02, 90.02, 90.02],
        to_rgb=False),
    backbone=dict(
        type='MobileNetV2',
        widen_factor=1.0,
        frozen_stages=7,  # conv1 and layer1-7; conv2 via lr_mult=0 below
        norm_eval=True,
        init_cfg=dict(type='Pretrained', checkpoint='', prefix='backbone.')),
    # MAE's linear-probe recipe: a BatchNorm without affine parameters
    # standardises the pooled features before the linear layer (at test time
    # a fixed affine map, so the classifier stays linear). Self-supervised
    # features of a short CPU run are far from standardised, and plain SGD
    # on them converges slowly and depends strongly on the learning rate.
    neck=[
        dict(type='GlobalAveragePooling'),
        dict(type='ClsBatchNormNeck', input_features=1280),
    ],
    head=dict(
        type='LinearClsHead',
        num_classes=10,
        in_channels=1280,
        loss=dict(type='CrossEntropyLoss', loss_weight=1.0),
        topk=(1, 5)))

dataset_type = 'FashionMNIST'
data_root = 'data/fashion_mnist'
train_pipeline = [
    dict(type='GrayToRGB'),
    dict(type='Resize', scale=32, backend='pillow'),
    dict(type='RandomCrop', crop_size=32, padding=2),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='PackInputs'),
]
test_pipeline = [
    dict(type='GrayToRGB'),
    dict(type='Resize', scale=32, backend='pillow'),
    dict(type='PackInputs'),
]
train_dataloader = dict(
    batch_size=256,
    num_workers=2,
    sampler=dict(type='DefaultSampler', shuffle=True),
    collate_fn=dict(type='default_collate'),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        split='train',
        download=False,
        pipeline=train_pipeline))
val_dataloader = dict(
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
val_evaluator = dict(type='Accuracy', topk=(1, 5))
test_dataloader = val_dataloader
test_evaluator = val_evaluator

# SGD on the linear head only: frozen_stages leaves MobileNetV2's final 1x1
# conv trainable, so the whole backbone gets a zero learning rate and decay.
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='SGD', lr=0.1, momentum=0.9, weight_decay=0.),
    paramwise_cfg=dict(
        custom_keys={'backbone': dict(lr_mult=0.0, decay_mult=0.0)}))
param_scheduler = [
    dict(type='CosineAnnealingLR', T_max=10, by_epoch=True, begin=0, end=10)
]
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=10, val_interval=1)
val_cfg = dict()
test_cfg = dict()

# Fail before training when the checkpoint does not fit the backbone.
custom_hooks = [dict(type='StrictPretrainedCheckHook', modules=['backbone'])]
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=50),
    checkpoint=dict(type='CheckpointHook', interval=5, max_keep_ckpts=1))
randomness = dict(seed=0)
env_cfg = dict(dist_cfg=dict(backend='gloo'))
