# Copyright (c) OpenMMLab. All rights reserved.
from .checkpoint_utils import (PretrainedMismatchError, PrefixMatch,
                               load_prefixed_weights, match_prefixed_state,
                               read_state_dict)
from .knn import (build_data_preprocessor, build_knn_dataloader, evaluate_knn,
                  extract_features, pool_features, weighted_knn)
from .knn_eval import format_knn_table, run_knn_eval
from .pretrained_check_hook import StrictPretrainedCheckHook
from .relation_diagnostics import (pairwise_relation_scores, prototype_summary,
                                   run_relation_diagnostics)

__all__ = [
    'PretrainedMismatchError', 'PrefixMatch', 'load_prefixed_weights',
    'match_prefixed_state', 'read_state_dict', 'build_data_preprocessor',
    'build_knn_dataloader', 'evaluate_knn', 'extract_features',
    'pool_features', 'weighted_knn', 'format_knn_table', 'run_knn_eval',
    'StrictPretrainedCheckHook', 'pairwise_relation_scores',
    'prototype_summary', 'run_relation_diagnostics'
]
