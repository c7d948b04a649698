# Copyright (c) OpenMMLab. All rights reserved.
from .atomic_checkpoint_hook import AtomicCheckpointHook
from .channels_last_hook import ChannelsLastHook
from .knn_monitor_hook import KNNMonitorHook
from .loss_guard_hook import LossGuardHook
from .pretrained_check_hook import StrictPretrainedCheckHook
from .relation_miner_hook import RelationMinerHook

__all__ = [
    'AtomicCheckpointHook', 'ChannelsLastHook', 'KNNMonitorHook', 'LossGuardHook',
    'RelationMinerHook', 'StrictPretrainedCheckHook'
]
