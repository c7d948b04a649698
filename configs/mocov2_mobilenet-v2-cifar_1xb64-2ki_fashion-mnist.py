# MoCo v2 baseline of the fashion-mnist quality regime: same student, data,
# augmentations, batch and schedule as
# rekd_mobilenet-v2-cifar-t-resnet18-cifar_1xb64-2ki_fashion-mnist.py.
_base_ = [
    './_base_/models/mocov2_mobilenet-v2-cifar_32px.py',
    './_base_/fashion-mnist_mocov2-32px.py',
]
custom_imports = dict(imports=['rekd_mm'], allow_failed_imports=False)
default_scope = 'mmpretrain'
