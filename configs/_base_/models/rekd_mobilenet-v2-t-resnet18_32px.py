# The CPU demos' model, optimiser, schedule and hooks (Fashion-MNIST and
# CIFAR-10 share them; the data come from a separate data base).
# MobileNetV2 student, ResNet-18 online teacher (heterogeneous), 32 px inputs.
_base_ = 'mmpretrain::_base_/default_runtime.py'
feat_dim = 128
# Projectors with BN (MoCo v3's NonLinearNeck: Linear-BN-ReLU-Linear-BN, the
# last BN without affine) instead of MoCo v2's plain MLP. Measured on this
# demo (docs/method.md, "Observed"): with MoCoV2Neck both small 32 px encoders
# collapse within ~50 iterations (all keys within a few degrees of one
# drifting direction, the loss rising towards log(queue_len + 1)) and the
# student's kNN falls from 71.8 (random init) to 39; the last BN centres
# every batch, which removes that drifting common direction.
projector = dict(
    hid_channels=512,
    out_channels=feat_dim,
    num_layers=2,
    with_bias=False,
    with_last_bn=True,
    with_last_bn_affine=False,
    with_last_bias=False,
    with_avg_pool=True)
model = dict(
    type='ReKD',
    queue_len=4096,
    feat_dim=feat_dim,
    momentum=0.01,  # mmengine convention: weight of the new value
    backbone=dict(type='MobileNetV2', widen_factor=1.0),
    neck=dict(type='NonLinearNeck', in_channels=1280, **projector),
    head=dict(type='RelationContrastiveHead', temperature=0.2),
    teacher_backbone=dict(type='ResNet', depth=18, norm_cfg=dict(type='BN')),
    teacher_neck=dict(type='NonLinearNeck', in_channels=512, **projector),
    teacher_head=dict(
        type='ContrastiveHead',
        loss=dict(type='CrossEntropyLoss'),
        temperature=0.2),
    # K = 100 for a 4096-slot queue (~40 slots a prototype when balanced).
    # This early the online teacher's keys share a large drifting common
    # component; mining in a batch-centred space keeps ~20x more prototypes
    # in use (39 vs 2 of 100, 120 iterations after clustering; see
    # docs/method.md).
    miner=dict(
        num_prototypes=100, threshold=0.5, momentum=0.99, center='batch'),
    loss_weights=dict(teacher=1.0, relation=1.0, kd=0.0))

optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='SGD', lr=0.02, weight_decay=5e-4, momentum=0.9))
# No T_max/end: the cosine ends at train_cfg.max_iters, so a longer run is
# just --cfg-options train_cfg.max_iters=N.
param_scheduler = [dict(type='CosineAnnealingLR', by_epoch=False, begin=0)]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=400)

custom_hooks = [
    # The teacher warms up for 100 iterations (6400 images: the queue is
    # full), then the bank is clustered from the teacher queue. The online
    # teacher moves fast this early, faster than the momentum update can
    # follow, so the bank is re-clustered every 100 iterations.
    dict(
        type='RelationMinerHook',
        init_iter=100,
        source='queue',
        recluster_interval=100,
        by_epoch=False),
    # Stop at the first NaN/inf loss term, before it can be checkpointed.
    dict(type='LossGuardHook'),
    # Student and teacher backbones as plain tensor files in the work dir,
    # readable by mmpretrain's and mmdet's own tools (weights_only=True).
    dict(type='ExportWeightsHook'),
]
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=20),
    # Crash-safe checkpoints (temp file + rename).
    checkpoint=dict(
        type='AtomicCheckpointHook',
        by_epoch=False,
        interval=200,
        max_keep_ckpts=2))
log_processor = dict(by_epoch=False)
randomness = dict(seed=0)
env_cfg = dict(dist_cfg=dict(backend='gloo'))
