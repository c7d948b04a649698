# MoCo v2 baseline on ImageNet-1k for the ShuffleNetV2 (1.0x) student.
_base_ = './mocov2_mobilenet-v2_8xb32-coslr-200e_in1k.py'
custom_imports = dict(imports=['rekd_mm'], allow_failed_imports=False)

model = dict(
    backbone=dict(_delete_=True, type='ShuffleNetV2', widen_factor=1.0),
    neck=dict(in_channels=1024, hid_channels=1024))
