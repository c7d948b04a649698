# Quality-benchmark regime "small4k": ReKD on fashion-mnist at 32 px, 4000
# iterations of 64, MobileNetV2 (stride-1 stem) student, half-width ResNet-18
# (CIFAR stem) online teacher.
# rekd_mobilenet-v2-cifar-t-resnet18-cifar_1xb64-2ki_fashion-mnist.py with
# what the regime search measured to help (docs/quality.md, "Batch-statistics
# shortcut (session 5)"): SplitBN with 4 slices of 16 in every BN of the
# student and of the teacher (MoCo's shuffle-BN on one process: whole-batch
# BN lets the positive key be found from the batch statistics), lr 0.015
# instead of 0.06, 4000 iterations (the cosine follows), and crops (0.5, 1)
# instead of (0.2, 1); and, measured in the final comparison, response
# distillation (below). The crops come from their own data base, which takes
# the place of the 2ki config's (mmengine does not re-resolve a base's
# pipelines, so this config repeats the 2ki config's two bases rather than
# inheriting it).
_base_ = [
    './_base_/models/rekd_mobilenet-v2-cifar-t-resnet18-cifar_32px.py',
    './_base_/fashion-mnist_mocov2-32px-crop0.5.py',
]
custom_imports = dict(imports=['rekd_mm'], allow_failed_imports=False)
default_scope = 'mmpretrain'
split_bn = dict(type='SplitBN', num_splits=4)
model = dict(
    backbone=dict(norm_cfg=split_bn),
    neck=dict(norm_cfg=split_bn),
    teacher_backbone=dict(norm_cfg=split_bn),
    teacher_neck=dict(norm_cfg=split_bn),
    # Response distillation from the online teacher, through the student's
    # own linear map into the teacher's space (docs/method.md #21, #27), at
    # weight 4. Measured (issue #12, docs/quality.md, seeds 0-2 each): on
    # CIFAR-10 the student ends +3.76 kNN above MoCo v2 at kd=4 (+2.40 at
    # kd=1), 0.59-0.88 below its teacher instead of 1.2-1.6; on Fashion-MNIST
    # +0.45 above kd=1, still 0.83 below MoCo v2 (the teacher has no lead
    # there). The method's own default (the contract) stays kd=0: --cfg-options
    # model.loss_weights.kd=0 model.kd_projection=False.
    loss_weights=dict(kd=4.0),
    kd_projection=True)
optim_wrapper = dict(optimizer=dict(lr=0.015))
train_cfg = dict(max_iters=4000)
