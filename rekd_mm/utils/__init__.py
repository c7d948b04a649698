# Copyright (c) rekd_mm contributors. All rights reserved.
from .checkpoint import (CheckpointLoadError, PrefixMatch,
                         PretrainedMismatchError, describe_mismatch,
                         load_prefixed_weights, load_state_dict_file,
                         match_prefixed_state,
                         register_checkpoint_safe_globals,
                         torch_load_weights_only)
from .dist import (CPUDistributedDataParallel, revert_sync_bn_cfg,
                   setup_cpu_distributed, teardown_cpu_distributed)
from .encoder_weights import (ENCODER_WEIGHTS, MOMENTUM_ENCODER_NAMES,
                              EncoderMapping, load_encoder_weights,
                              remap_encoder_state, resolve_encoder_mapping)
from .preflight import DataPathError, check_data_roots
from .safe_loaders import (load_url_weights_only,
                           register_safe_checkpoint_loaders)

__all__ = [
    'PretrainedMismatchError', 'PrefixMatch', 'describe_mismatch',
    'load_prefixed_weights', 'load_state_dict_file', 'match_prefixed_state',
    'ENCODER_WEIGHTS', 'MOMENTUM_ENCODER_NAMES', 'EncoderMapping',
    'resolve_encoder_mapping', 'remap_encoder_state', 'load_encoder_weights',
    'register_checkpoint_safe_globals', 'revert_sync_bn_cfg',
    'setup_cpu_distributed', 'teardown_cpu_distributed', 'DataPathError',
    'check_data_roots', 'CPUDistributedDataParallel', 'CheckpointLoadError',
    'torch_load_weights_only', 'load_url_weights_only',
    'register_safe_checkpoint_loaders'
]
