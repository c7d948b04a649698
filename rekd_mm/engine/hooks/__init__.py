# Copyright (c) OpenMMLab. All rights reserved.
from .relation_miner_hook import RelationMinerHook

__all__ = ['RelationMinerHook']
