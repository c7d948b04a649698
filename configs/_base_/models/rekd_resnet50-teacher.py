# ReKD with an online ResNet-50 teacher, MoCo v2 recipe (as mmpretrain's
# mocov2_resnet50_8xb32-coslr-200e_in1k.py) on both sides. The student,
# ``backbone`` and the ``in_channels``/``hid_channels`` of ``neck``, is set by
# the config that inherits this file.
feat_dim = 128
model = dict(
    type='ReKD',
    queue_len=65536,
    feat_dim=feat_dim,
    momentum=0.001,  # mmengine convention: MoCo's 0.999
    # MoCo v2 projection MLP; the student sets its width (hidden = input).
    neck=dict(type='MoCoV2Neck', out_channels=feat_dim, with_avg_pool=True),
    head=dict(type='RelationContrastiveHead', temperature=0.2),
    teacher_backbone=dict(
        type='ResNet',
        depth=50,
        norm_cfg=dict(type='BN'),
        zero_init_residual=False),
    teacher_neck=dict(
        type='MoCoV2Neck',
        in_channels=2048,
        hid_channels=2048,
        out_channels=feat_dim,
        with_avg_pool=True),
    teacher_head=dict(
        type='ContrastiveHead',
        loss=dict(type='CrossEntropyLoss'),
        temperature=0.2),
    # K = 3000 prototypes (3x over-clustering of ImageNet's 1000 classes, as
    # in SwAV) and Θ = 0.5 (the cosine above which an embedding joins a
    # prototype, the value that worked on the Fashion-MNIST/CIFAR-10 demos).
    # Neither was measured at ImageNet scale; both are knobs.
    miner=dict(num_prototypes=3000, threshold=0.5, momentum=0.99),
    loss_weights=dict(teacher=1.0, relation=1.0, kd=0.0))
