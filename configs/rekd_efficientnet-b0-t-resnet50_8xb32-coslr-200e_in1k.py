# ReKD on ImageNet-1k: EfficientNet-B0 student, online ResNet-50 teacher.
_base_ = './rekd_mobilenet-v2-t-resnet50_8xb32-coslr-200e_in1k.py'
custom_imports = dict(imports=['rekd_mm'], allow_failed_imports=False)

model = dict(
    backbone=dict(_delete_=True, type='EfficientNet', arch='b0'),
    neck=dict(in_channels=1280, hid_channels=1280))
