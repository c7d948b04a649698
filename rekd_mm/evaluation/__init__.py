# Copyright (c) rekd_mm contributors. All rights reserved.
from .knn import (build_data_preprocessor, build_knn_dataloader, evaluate_knn,
                  extract_features, pool_features, weighted_knn)
from .knn_eval import format_knn_table, run_knn_eval
from .relation_diagnostics import (pairwise_relation_scores, prototype_summary,
                                   run_relation_diagnostics)

__all__ = [
    'build_data_preprocessor', 'build_knn_dataloader', 'evaluate_knn',
    'extract_features', 'pool_features', 'weighted_knn', 'format_knn_table',
    'run_knn_eval', 'pairwise_relation_scores', 'prototype_summary',
    'run_relation_diagnostics'
]
