# The supervised reference of the quality benchmark (docs/quality.md): the
# small-image regime's student (MobileNetV2, stride-1 stem) trained with
# labels and cross-entropy at the same budget as the self-supervised runs
# (batch 64, 2000 iterations, SGD lr 0.06 cosine, wd 5e-4, one augmented
# view). Its kNN is the ceiling of what the student learns in this budget.
_base_ = 'mmpretrain::_base_/default_runtime.py'
model = dict(
    type='ImageClassifier',
    backbone=dict(type='MobileNetV2_CIFAR', stem_stride=1),
    neck=dict(type='GlobalAveragePooling'),
    head=dict(
        type='LinearClsHead',
        num_classes=10,
        in_channels=1280,
        loss=dict(type='CrossEntropyLoss')))
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='SGD', lr=0.06, weight_decay=5e-4, momentum=0.9))
param_scheduler = [dict(type='CosineAnnealingLR', by_epoch=False, begin=0)]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=2000)
val_cfg = None
val_dataloader = None
val_evaluator = None
test_cfg = None
test_dataloader = None
test_evaluator = None
custom_hooks = [dict(type='ChannelsLastHook'), dict(type='LossGuardHook')]
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=50),
    checkpoint=dict(
        type='AtomicCheckpointHook',
        by_epoch=False,
        interval=500,
        max_keep_ckpts=1))
log_processor = dict(by_epoch=False)
randomness = dict(seed=0)
env_cfg = dict(dist_cfg=dict(backend='gloo'))
