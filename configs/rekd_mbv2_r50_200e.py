# ReKD, MobileNetV2 student, ResNet-50 teacher, 200 epochs on ImageNet-1k:
# the short name of rekd_mobilenet-v2-t-resnet50_8xb32-coslr-200e_in1k.py.
_base_ = './rekd_mobilenet-v2-t-resnet50_8xb32-coslr-200e_in1k.py'
custom_imports = dict(imports=['rekd_mm'], allow_failed_imports=False)
