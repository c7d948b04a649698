# The small-image regime of the quality benchmark (docs/quality.md, "Regime"):
# model, optimiser, schedule and hooks shared by Fashion-MNIST and CIFAR-10
# (the data come from a separate data base).
# Student: MobileNetV2 with a stride-1 stem (2 x 2 last map at 32 px instead
# of 1 x 1). Teacher, online and heterogeneous: ResNet-18 with the CIFAR stem
# (3x3, stride 1, no max-pool) at half width, downsampling from its first
# stage (also 2 x 2 at the end); the full-width ResNet_CIFAR-18 costs ~10x
# more per image than this student on one CPU core.
_base_ = 'mmpretrain::_base_/default_runtime.py'
feat_dim = 128
# MoCo v3's projector (Linear-BN-ReLU-Linear-BN, last BN without affine):
# MoCoV2Neck collapses at 32 px (docs/method.md, "Observed").
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
    backbone=dict(type='MobileNetV2_CIFAR', stem_stride=1),
    neck=dict(type='NonLinearNeck', in_channels=1280, **projector),
    head=dict(
        type='RelationContrastiveHead',
        temperature=0.2,
        # Measured (issue #12, docs/quality.md): with ~400 label positives
        # per anchor the mean of log-probabilities gains nothing over MoCo
        # v2, the log of the summed probabilities gains +6 kNN points.
        pos_combine='log_sum'),
    teacher_backbone=dict(
        type='ResNet_CIFAR',
        depth=18,
        stem_channels=32,
        base_channels=32,
        strides=(2, 2, 2, 2),
        norm_cfg=dict(type='BN')),
    teacher_neck=dict(type='NonLinearNeck', in_channels=256, **projector),
    teacher_head=dict(
        type='ContrastiveHead',
        loss=dict(type='CrossEntropyLoss'),
        temperature=0.2),
    miner=dict(
        num_prototypes=100, threshold=0.5, momentum=0.99, center='batch'),
    loss_weights=dict(teacher=1.0, relation=1.0, kd=0.0))

optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='SGD', lr=0.06, weight_decay=5e-4, momentum=0.9))
# The cosine ends at train_cfg.max_iters: a longer run is just
# --cfg-options train_cfg.max_iters=N.
param_scheduler = [dict(type='CosineAnnealingLR', by_epoch=False, begin=0)]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=2000)

custom_hooks = [
    # NHWC weights: 1.5-1.8x faster depthwise convolutions on CPU.
    dict(type='ChannelsLastHook'),
    dict(
        type='RelationMinerHook',
        init_iter=500,
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
    logger=dict(type='LoggerHook', interval=50),
    checkpoint=dict(
        type='AtomicCheckpointHook',
        by_epoch=False,
        interval=500,
        max_keep_ckpts=1))
log_processor = dict(by_epoch=False)
randomness = dict(seed=0)
env_cfg = dict(dist_cfg=dict(backend='gloo'))
