# MoCo v2 baseline on ImageNet-1k for the EfficientNet-B0 student.
_base_ = './mocov2_mobilenet-v2_8xb32-coslr-200e_in1k.py'
custom_imports = dict(imports=['rekd_mm'], allow_failed_imports=False)

model = dict(
    backbone=dict(_delete_=True, type='EfficientNet', arch='b0'),
    neck=dict(in_channels=1280, hid_channels=1280))
