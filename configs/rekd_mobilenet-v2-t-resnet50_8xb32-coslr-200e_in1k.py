# ReKD on ImageNet-1k: MobileNetV2 student, online ResNet-50 teacher, the MoCo
# v2 recipe (8 GPUs x 32 = 256 images per step, SGD lr 0.03, cosine, 200
# epochs). The other students inherit this file.
_base_ = [
    'mmpretrain::_base_/datasets/imagenet_bs32_mocov2.py',
    'mmpretrain::_base_/schedules/imagenet_sgd_coslr_200e.py',
    'mmpretrain::_base_/default_runtime.py',
    './_base_/models/rekd_resnet50-teacher.py',
]
custom_imports = dict(imports=['rekd_mm'], allow_failed_imports=False)

model = dict(
    backbone=dict(type='MobileNetV2', widen_factor=1.0),
    neck=dict(in_channels=1280, hid_channels=1280))

custom_hooks = [
    # The online teacher warms up for 10 epochs (its queue is full after 256
    # iterations), then the bank is clustered from the teacher queue.
    dict(type='RelationMinerHook', init_epoch=10, source='queue'),
    # Stop at the first NaN/inf loss term, before it can be checkpointed.
    dict(type='LossGuardHook'),
    # At the end: work_dir/{student,teacher}_backbone.pth, plain tensors that
    # mmpretrain/mmdet tools load with prefix='backbone.' (no rekd_mm import).
    dict(type='ExportWeightsHook'),
]

# Crash-safe checkpoints (temp file + rename); keep the latest 3.
default_hooks = dict(
    checkpoint=dict(type='AtomicCheckpointHook', max_keep_ckpts=3))

# NOTE: `auto_scale_lr` is for automatically scaling LR
# based on the actual training batch size.
auto_scale_lr = dict(base_batch_size=256)
