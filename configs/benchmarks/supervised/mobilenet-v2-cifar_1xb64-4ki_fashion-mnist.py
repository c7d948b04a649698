# Supervised reference (labels + cross-entropy) of the Fashion-MNIST "small4k"
# quality regime (docs/quality.md, "Batch-statistics shortcut (session 5)"):
# the 2ki reference at the regime's budget, 4000 iterations of 64 (the cosine
# follows), with one view of the 4ki MoCo v2 / ReKD view pipeline (crops
# (0.5, 1), the single_view_train_pipeline of the crop data base, which takes
# the place of the 2ki reference's data base). Its own optimiser (lr 0.06)
# and plain BN are kept: SplitBN removes the batch-statistics shortcut of the
# contrastive task (a positive key found from its batch-mates), which a
# supervised loss does not have, and lr 0.015 was chosen for MoCo v2's queue
# (docs/quality.md, session 4).
_base_ = [
    './_base_/mobilenet-v2-cifar_1xb64-2ki.py',
    '../../_base_/fashion-mnist_mocov2-32px-crop0.5.py',
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
train_cfg = dict(max_iters=4000)
