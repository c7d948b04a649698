# Copyright (c) OpenMMLab. All rights reserved.
from .checkpoint import (PretrainedMismatchError, PrefixMatch,
                         describe_mismatch, load_prefixed_weights,
                         load_state_dict_file, match_prefixed_state,
                         register_checkpoint_safe_globals)
from .dist import (CPUDistributedDataParallel, revert_sync_bn_cfg, setup_cpu_distributed,
                   teardown_cpu_distributed)
from .preflight import DataPathError, check_data_roots

__all__ = [
    'PretrainedMismatchError', 'PrefixMatch', 'describe_mismatch',
    'load_prefixed_weights', 'load_state_dict_file', 'match_prefixed_state',
    'register_checkpoint_safe_globals', 'revert_sync_bn_cfg',
    'setup_cpu_distributed', 'teardown_cpu_distributed', 'DataPathError',
    'check_data_roots', 'CPUDistributedDataParallel'
]
