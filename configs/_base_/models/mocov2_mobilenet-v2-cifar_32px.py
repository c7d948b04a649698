# MoCo v2 baseline of the small-image regime: the student, queue, momentum,
# temperature, optimiser and schedule of
# rekd_mobilenet-v2-cifar-t-resnet18-cifar_32px.py; no teacher, no mining.
_base_ = './rekd_mobilenet-v2-cifar-t-resnet18-cifar_32px.py'

model = dict(
    _delete_=True,
    type='MoCo',
    queue_len={{_base_.model.queue_len}},
    feat_dim={{_base_.model.feat_dim}},
    momentum={{_base_.model.momentum}},
    backbone={{_base_.model.backbone}},
    neck={{_base_.model.neck}},
    head=dict(
        type='ContrastiveHead',
        loss=dict(type='CrossEntropyLoss'),
        temperature={{_base_.model.head.temperature}}))
custom_hooks = [dict(type='ChannelsLastHook'), dict(type='LossGuardHook')]
