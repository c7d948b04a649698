# Mask R-CNN with FPN on a ReKD MobileNetV2 student.
#
# Pass the ReKD checkpoint with
#   --cfg-options model.backbone.init_cfg.checkpoint=PATH
# The student's weights are stored under `backbone.` (the teacher's under
# `teacher.backbone.`, which this prefix does not select).
_base_ = 'mmdet::_base_/models/mask-rcnn_r50_fpn.py'

# MoCo's detection-transfer protocol: every layer fine-tuned, synchronised BN
# in the backbone and the FPN. The Runner turns SyncBN into BN when it does
# not run distributed; for multi-process CPU (gloo) training, where SyncBN
# does not run, pass
#   model.backbone.norm_cfg.type=BN model.neck.norm_cfg.type=BN
norm_cfg = dict(type='SyncBN', requires_grad=True)
model = dict(
    backbone=dict(
        _delete_=True,
        type='mmpretrain.MobileNetV2',
        widen_factor=1.0,
        # layer2 (24 ch, stride 4), layer3 (32, 8), layer5 (96, 16) and
        # conv2 (1280, 32): one output per FPN level; conv2 is the layer the
        # ReKD heads were trained on.
        out_indices=(1, 2, 4, 7),
        frozen_stages=-1,
        norm_cfg=norm_cfg,
        norm_eval=False,
        init_cfg=dict(type='Pretrained', checkpoint='', prefix='backbone.')),
    neck=dict(in_channels=[24, 32, 96, 1280], norm_cfg=norm_cfg))
