# Quality-benchmark regime: ReKD on fashion-mnist at 32 px, 2000 iterations
# of 64, MobileNetV2 (stride-1 stem) student, half-width ResNet-18 (CIFAR
# stem) online teacher. See docs/quality.md.
_base_ = [
    './_base_/models/rekd_mobilenet-v2-cifar-t-resnet18-cifar_32px.py',
    './_base_/fashion-mnist_mocov2-32px.py',
]
custom_imports = dict(imports=['rekd_mm'], allow_failed_imports=False)
default_scope = 'mmpretrain'
