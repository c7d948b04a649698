# MoCo v2 baseline of the fashion-mnist ReKD demo: same student, data,
# augmentations, batch and schedule; no teacher and no relation mining.
_base_ = [
    './_base_/models/mocov2_mobilenet-v2_32px.py',
    './_base_/fashion-mnist_mocov2-32px.py',
]
custom_imports = dict(imports=['rekd_mm'], allow_failed_imports=False)
default_scope = 'mmpretrain'
