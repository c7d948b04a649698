# Copyright (c) OpenMMLab. All rights reserved.
from .prototype_bank import PrototypeBank, count_used
from .spherical_kmeans import (assign_to_centroids, kmeans_objective,
                               spherical_kmeans)

__all__ = [
    'PrototypeBank', 'count_used', 'assign_to_centroids', 'kmeans_objective',
    'spherical_kmeans'
]
