# MoCo v2 baseline on ImageNet-1k for the MobileNetV2 student: mmpretrain's
# MoCo v2 recipe with the ResNet-50 swapped for MobileNetV2 (the projection
# MLP's hidden width equals the backbone's output, as for ResNet-50). The
# other baselines inherit this file.
_base_ = 'mmpretrain::mocov2/mocov2_resnet50_8xb32-coslr-200e_in1k.py'
custom_imports = dict(imports=['rekd_mm'], allow_failed_imports=False)

model = dict(
    backbone=dict(_delete_=True, type='MobileNetV2', widen_factor=1.0),
    neck=dict(in_channels=1280, hid_channels=1280))

# ExportWeightsHook: work_dir/student_backbone.pth for the official tools.
custom_hooks = [dict(type='LossGuardHook'), dict(type='ExportWeightsHook')]
# Crash-safe checkpoints (temp file + rename); keep the latest 3.
default_hooks = dict(
    checkpoint=dict(type='AtomicCheckpointHook', max_keep_ckpts=3))
