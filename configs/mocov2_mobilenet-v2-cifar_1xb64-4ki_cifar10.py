# MoCo v2 baseline of the cifar10 "small4k" quality regime: same student,
# data, augmentations, batch and schedule as
# rekd_mobilenet-v2-cifar-t-resnet18-cifar_1xb64-4ki_cifar10.py.
# The 2ki config with what the regime search measured to help
# (docs/quality.md, "Batch-statistics shortcut (session 5)"): SplitBN with 4
# slices of 16 in every BN of the encoder (MoCo's shuffle-BN on one process:
# whole-batch BN lets the positive key be found from the batch statistics),
# lr 0.015 instead of 0.06, and 4000 iterations (the cosine follows).
_base_ = './mocov2_mobilenet-v2-cifar_1xb64-2ki_cifar10.py'
split_bn = dict(type='SplitBN', num_splits=4)
model = dict(backbone=dict(norm_cfg=split_bn), neck=dict(norm_cfg=split_bn))
optim_wrapper = dict(optimizer=dict(lr=0.015))
train_cfg = dict(max_iters=4000)
