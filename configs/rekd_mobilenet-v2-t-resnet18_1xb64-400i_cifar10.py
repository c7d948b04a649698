# Demo: ReKD on CIFAR-10 (real colour images), CPU-friendly.
# MobileNetV2 student, ResNet-18 online teacher (heterogeneous), 32 px inputs.
# Model, optimiser and miner schedule are those of the Fashion-MNIST demo
# (rekd_mobilenet-v2-t-resnet18_1xb64-400i_fashion-mnist.py; the two are
# kept equal by tests/test_configs.py); only the data differ. A config cannot
# inherit that demo and a second data base at once (mmengine forbids the
# same key in two bases), hence the repetition.
# The learning-rate schedule follows train_cfg.max_iters, so a longer run
# is just --cfg-options train_cfg.max_iters=N.
_base_ = [
    'mmpretrain::_base_/default_runtime.py',
    './_base_/cifar10_mocov2-32px.py',
]
custom_imports = dict(imports=['rekd_mm'], allow_failed_imports=False)
default_scope = 'mmpretrain'

feat_dim = 128
model = dict(
    type='ReKD',
    queue_len=4096,
    feat_dim=feat_dim,
    momentum=0.01,  # mmengine convention: weight of the new value
    backbone=dict(type='MobileNetV2', widen_factor=1.0),
    neck=dict(
        type='MoCoV2Neck',
        in_channels=1280,
        hid_channels=512,
        out_channels=feat_dim,
        with_avg_pool=True),
    head=dict(type='RelationContrastiveHead', temperature=0.2),
    teacher_backbone=dict(type='ResNet', depth=18, norm_cfg=dict(type='BN')),
    teacher_neck=dict(
        type='MoCoV2Neck',
        in_channels=512,
        hid_channels=512,
        out_channels=feat_dim,
        with_avg_pool=True),
    teacher_head=dict(
        type='ContrastiveHead',
        loss=dict(type='CrossEntropyLoss'),
        temperature=0.2),
    miner=dict(num_prototypes=100, threshold=0.5, momentum=0.99),
    loss_weights=dict(teacher=1.0, relation=1.0, kd=0.0))

optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='SGD', lr=0.06, weight_decay=5e-4, momentum=0.9))
# No T_max/end: the Runner ends the cosine at train_cfg.max_iters.
param_scheduler = [dict(type='CosineAnnealingLR', by_epoch=False, begin=0)]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=400)

custom_hooks = [
    # The teacher warms up for 100 iterations (6400 images, the queue full),
    # then the bank is clustered from the teacher queue.
    dict(type='RelationMinerHook', init_iter=100, source='queue')
]
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=20),
    checkpoint=dict(
        type='CheckpointHook', by_epoch=False, interval=200, max_keep_ckpts=2))
log_processor = dict(by_epoch=False)
randomness = dict(seed=0)
env_cfg = dict(dist_cfg=dict(backend='gloo'))
