# Demo: ReKD on Fashion-MNIST, CPU-friendly (a few minutes on 2 cores).
# MobileNetV2 student, ResNet-18 online teacher (heterogeneous), 32 px inputs.
_base_ = [
    './_base_/models/rekd_mobilenet-v2-t-resnet18_32px.py',
    './_base_/fashion-mnist_mocov2-32px.py',
]
custom_imports = dict(imports=['rekd_mm'], allow_failed_imports=False)
default_scope = 'mmpretrain'
