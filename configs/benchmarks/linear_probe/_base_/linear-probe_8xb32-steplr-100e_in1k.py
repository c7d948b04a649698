# Linear probe on ImageNet-1k, MoCo v2's protocol as in mmpretrain's
# mocov2/benchmarks/resnet50_8xb32-linear-steplr-100e_in1k.py (8 GPUs x 32
# images, SGD lr 30 without weight decay, steps at epochs 60 and 80), with the
# backbone strictly frozen. The student configs in this folder inherit this
# file and set model.backbone (frozen_stages, norm_eval, init_cfg) and
# model.head.in_channels.
#
# Usage: --cfg-options model.backbone.init_cfg.checkpoint=<ReKD checkpoint>
# (the student is stored under 'backbone.'; use prefix='teacher.backbone.' and
# the teacher's backbone to probe the teacher).
_base_ = (
    'mmpretrain::mocov2/benchmarks/resnet50_8xb32-linear-steplr-100e_in1k.py')
custom_imports = dict(imports=['rekd_mm'], allow_failed_imports=False)

# Batch with default_collate (as the pretraining does), declared here: the
# `mmpretrain::` base declares no collate_fn, so there is no `_scope_`-tagged
# one to `_delete_` (a `_delete_` without a base key would stay in the dict
# and reach default_collate as a keyword argument).
train_dataloader = dict(collate_fn=dict(type='default_collate'))
val_dataloader = dict(collate_fn=dict(type='default_collate'))
test_dataloader = dict(collate_fn=dict(type='default_collate'))

# frozen_stages does not reach every layer of every backbone (MobileNetV2's
# final 1x1 conv, ShuffleNetV2's last conv): a zero learning rate and weight
# decay on the whole backbone make the probe strictly linear.
optim_wrapper = dict(
    paramwise_cfg=dict(
        custom_keys={'backbone': dict(lr_mult=0.0, decay_mult=0.0)}))

# Fail before training when the checkpoint does not fit the backbone (a
# Pretrained load that matches nothing only warns in mmengine).
custom_hooks = [dict(type='StrictPretrainedCheckHook', modules=['backbone'])]
