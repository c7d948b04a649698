# Faster R-CNN with FPN on a ReKD ResNet-18 student.
#
# Pass the ReKD checkpoint with
#   --cfg-options model.backbone.init_cfg.checkpoint=PATH
# The student's weights are stored under `backbone.` (the teacher's under
# `teacher.backbone.`, which this prefix does not select).
_base_ = 'mmdet::_base_/models/faster-rcnn_r50_fpn.py'

# MoCo's detection-transfer protocol: every layer fine-tuned, synchronised BN
# in the backbone and the FPN. The Runner turns SyncBN into BN when it does
# not run distributed; for multi-process CPU (gloo) training, where SyncBN
# does not run, pass
#   model.backbone.norm_cfg.type=BN model.neck.norm_cfg.type=BN
norm_cfg = dict(type='SyncBN', requires_grad=True)
model = dict(
    backbone=dict(
        _delete_=True,
        type='mmpretrain.ResNet',
        depth=18,
        out_indices=(0, 1, 2, 3),  # strides 4-32, one per FPN level
        frozen_stages=-1,
        norm_cfg=norm_cfg,
        norm_eval=False,
        style='pytorch',
        init_cfg=dict(type='Pretrained', checkpoint='', prefix='backbone.')),
    neck=dict(in_channels=[64, 128, 256, 512], norm_cfg=norm_cfg))
