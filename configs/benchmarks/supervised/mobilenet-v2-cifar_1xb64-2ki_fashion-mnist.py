# Supervised reference (labels + cross-entropy) of the Fashion-MNIST quality
# regime: one view of the MoCo v2 view pipeline of the data base
# (its single_view_train_pipeline).
_base_ = [
    './_base_/mobilenet-v2-cifar_1xb64-2ki.py',
    '../../_base_/fashion-mnist_mocov2-32px.py',
]
custom_imports = dict(imports=['rekd_mm'], allow_failed_imports=False)
default_scope = 'mmpretrain'
model = dict(
    data_preprocessor=dict(
        type='ClsDataPreprocessor',
        num_classes=10,
        mean={{_base_.data_preprocessor.mean}},
        std={{_base_.data_preprocessor.std}},
        to_rgb=False))
train_dataloader = dict(
    dataset=dict(pipeline={{_base_.single_view_train_pipeline}}))
