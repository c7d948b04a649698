# MoCo v2 baseline on ImageNet-1k for the ResNet-18 student.
_base_ = './mocov2_mobilenet-v2_8xb32-coslr-200e_in1k.py'
custom_imports = dict(imports=['rekd_mm'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        _delete_=True,
        type='ResNet',
        depth=18,
        norm_cfg=dict(type='BN'),
        zero_init_residual=False),
    neck=dict(in_channels=512, hid_channels=512))
