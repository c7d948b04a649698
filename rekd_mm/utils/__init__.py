# Copyright (c) rekd_mm contributors. All rights reserved.
from .checkpoint import (ENCODER_WEIGHTS, CheckpointLoadError, EncoderMapping,
                         PrefixMatch, PretrainedMismatchError,
                         describe_mismatch, load_encoder_weights,
                         load_prefixed_weights, load_state_dict_file,
                         match_prefixed_state,
                         register_checkpoint_safe_globals, remap_encoder_state,
                         resolve_encoder_mapping, torch_load_weights_only)
from .dist import (CPUDistributedDataParallel, revert_sync_bn_cfg,
                   setup_cpu_distributed, teardown_cpu_distributed)
from .preflight import DataPathError, check_data_roots
from .safe_loaders import (load_url_weights_only,
                           register_safe_checkpoint_loaders)

__all__ = [
    'PretrainedMismatchError', 'PrefixMatch', 'describe_mismatch',
    'load_prefixed_weights', 'load_state_dict_file', 'match_prefixed_state',
    'ENCODER_WEIGHTS', 'EncoderMapping', 'resolve_encoder_mapping',
    'remap_encoder_state', 'load_encoder_weights',
    'register_checkpoint_safe_globals', 'revert_sync_bn_cfg',
    'setup_cpu_distributed', 'teardown_cpu_distributed', 'DataPathError',
    'check_data_roots', 'CPUDistributedDataParallel', 'CheckpointLoadError',
    'torch_load_weights_only', 'load_url_weights_only',
    'register_safe_checkpoint_loaders'
]
