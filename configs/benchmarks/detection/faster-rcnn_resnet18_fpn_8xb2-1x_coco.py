# Faster R-CNN FPN 1x on COCO (mmdet's schedule: 12 epochs, 8 GPUs x 2).
_base_ = [
    './_base_/models/faster-rcnn_resnet18_fpn.py',
    'mmdet::_base_/datasets/coco_detection.py',
    'mmdet::_base_/schedules/schedule_1x.py', './_base_/default_runtime.py'
]
