# ReKD on ImageNet-1k: MobileNetV2 student (128-d), frozen offline teacher
# from mmpretrain's BYOL ResNet-50 (byol_resnet50_16xb256-coslr-200e_in1k,
# 256-d projector). Everything else is the MoCo v2 recipe of the parent.
_base_ = './rekd_mobilenet-v2-t-resnet50_8xb32-coslr-200e_in1k.py'
custom_imports = dict(imports=['rekd_mm'], allow_failed_imports=False)

# From mmpretrain's configs/byol/metafile.yml.
byol_checkpoint = (
    'https://download.openmmlab.com/mmselfsup/1.x/byol/'
    'byol_resnet50_16xb256-coslr-200e_in1k/'
    'byol_resnet50_16xb256-coslr-200e_in1k_20220825-de817331.pth')

# The parent's teacher backbone (ResNet-50, zero_init_residual=False) has the
# keys of BYOL's; a frozen teacher stays in eval mode, so its norm layers only
# read their running statistics and the BN / SyncBN choice does not matter.
model = dict(
    # BYOL's projector, exactly as in its config (NonLinearNeck's default
    # norm_cfg is SyncBN).
    teacher_neck=dict(
        _delete_=True,
        type='NonLinearNeck',
        in_channels=2048,
        hid_channels=4096,
        out_channels=256,
        num_layers=2,
        with_bias=True,
        with_last_bn=False,
        with_avg_pool=True),
    # Teacher queue and prototype bank in the projector's 256 dimensions; the
    # student keeps feat_dim=128 (the relation mask is all it reads).
    teacher_feat_dim=256,
    teacher_pretrained=dict(
        checkpoint=byol_checkpoint,
        # The file's only online encoder (backbone.* + neck.*), the weights
        # of BYOL's own evaluations; the choice is logged. weights='momentum'
        # would load the target network (target_net.) instead.
        weights='auto',
        # No teacher loss and no teacher momentum encoder (a frozen network
        # is its own): loss_weights.teacher, teacher_momentum and
        # teacher_head are unused. Every teacher weight must come from the
        # file, or the run stops before iteration 1.
        frozen=True))

custom_hooks = [
    # A pretrained teacher needs no warm-up: cluster the bank as soon as the
    # teacher queue is full (65536 keys / 256 per step = 256 iterations).
    dict(type='RelationMinerHook', init_iter=256, source='queue'),
    # Stop at the first NaN/inf loss term, before it can be checkpointed.
    dict(type='LossGuardHook'),
    # At the end: work_dir/{student,teacher}_backbone.pth, plain tensors that
    # mmpretrain/mmdet tools load with prefix='backbone.' (no rekd_mm import).
    dict(type='ExportWeightsHook'),
]
