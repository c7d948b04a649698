# ReKD on ImageNet-1k: ShuffleNetV2 (1.0x) student, online ResNet-50 teacher.
_base_ = './rekd_mobilenet-v2-t-resnet50_8xb32-coslr-200e_in1k.py'
custom_imports = dict(imports=['rekd_mm'], allow_failed_imports=False)

model = dict(
    backbone=dict(_delete_=True, type='ShuffleNetV2', widen_factor=1.0),
    neck=dict(in_channels=1024, hid_channels=1024))
