# ReKD on ImageNet-1k: MobileNetV3-Large student, online ResNet-50 teacher.
_base_ = './rekd_mobilenet-v2-t-resnet50_8xb32-coslr-200e_in1k.py'
custom_imports = dict(imports=['rekd_mm'], allow_failed_imports=False)

model = dict(
    # The last stage (a 1x1 conv to 960 channels) is the feature map.
    backbone=dict(_delete_=True, type='MobileNetV3', arch='large'),
    neck=dict(in_channels=960, hid_channels=960))
