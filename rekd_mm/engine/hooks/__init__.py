# Copyright (c) OpenMMLab. All rights reserved.
from .atomic_checkpoint_hook import AtomicCheckpointHook
from .knn_monitor_hook import KNNMonitorHook
from .loss_guard_hook import LossGuardHook
from .pretrained_check_hook import StrictPretrainedCheckHook
from .relation_miner_hook import RelationMinerHook

__all__ = [
    'AtomicCheckpointHook', 'KNNMonitorHook', 'LossGuardHook',
    'RelationMinerHook', 'StrictPretrainedCheckHook'
]
