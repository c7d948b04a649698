# Copyright (c) rekd_mm contributors. All rights reserved.
from .atomic_checkpoint_hook import AtomicCheckpointHook
from .channels_last_hook import ChannelsLastHook
from .export_weights_hook import ExportWeightsHook, export_backbone_weights
from .knn_monitor_hook import KNNMonitorHook
from .loss_guard_hook import LossGuardHook
from .pretrained_check_hook import StrictPretrainedCheckHook
from .relation_miner_hook import RelationMinerHook

__all__ = [
    'AtomicCheckpointHook', 'ChannelsLastHook', 'ExportWeightsHook',
    'export_backbone_weights', 'KNNMonitorHook', 'LossGuardHook',
    'RelationMinerHook', 'StrictPretrainedCheckHook'
]
