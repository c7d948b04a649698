# Copyright (c) rekd_mm contributors. All rights reserved.
from .batch_shuffle import (gather_shuffled, gather_unshuffled,
                            shuffle_permutation)
from .ema import SyncFreeEMA
from .prototype_bank import PrototypeBank, count_used
from .spherical_kmeans import (assign_to_centroids, kmeans_objective,
                               segment_sum, spherical_kmeans)
from .split_batch_norm import SplitBatchNorm, has_split_batch_norm
from .top_k_mask import top_k_of_mask

__all__ = [
    'PrototypeBank', 'count_used', 'assign_to_centroids', 'kmeans_objective',
    'spherical_kmeans', 'segment_sum', 'SyncFreeEMA', 'shuffle_permutation',
    'gather_shuffled', 'gather_unshuffled', 'SplitBatchNorm',
    'has_split_batch_norm', 'top_k_of_mask'
]
