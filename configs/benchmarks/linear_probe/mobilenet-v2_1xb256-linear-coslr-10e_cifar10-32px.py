# Linear probe of a ReKD MobileNetV2 student (pretrained with
# configs/rekd_mobilenet-v2-t-resnet18_1xb64-400i_cifar10.py) on CIFAR-10 at
# 32 px: the Fashion-MNIST probe's model and schedule on CIFAR-10's image
# folders (``<split>/<class>/<n>.jpg``, mmpretrain's CustomDataset).
#
# Usage (from the repository root):
#   python tools/train.py CONFIG \
#       --cfg-options model.backbone.init_cfg.checkpoint=<ReKD checkpoint>
# ``data_root`` is relative to the repository root; override it with
# --cfg-options train_dataloader.dataset.data_root=...
#     val_dataloader.dataset.data_root=...
#     test_dataloader.dataset.data_root=...
_base_ = './mobilenet-v2_1xb256-linear-coslr-10e_fashion-mnist.py'

# The pretraining's normalisation (configs/_base_/cifar10_mocov2-32px.py).
model = dict(
    data_preprocessor=dict(
        mean=[125.307, 122.961, 113.8575],
        std=[51.5865, 50.847, 51.255],
        to_rgb=True))

dataset_type = 'CustomDataset'
data_root = '../shared/data/cifar10'
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='RandomCrop', crop_size=32, padding=4),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='PackInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=32, backend='pillow'),
    dict(type='PackInputs'),
]
train_dataloader = dict(
    dataset=dict(
        _delete_=True,
        type=dataset_type,
        data_root=data_root,
        data_prefix='train',
        pipeline=train_pipeline))
val_dataloader = dict(
    dataset=dict(
        _delete_=True,
        type=dataset_type,
        data_root=data_root,
        data_prefix='test',
        pipeline=test_pipeline))
test_dataloader = val_dataloader
