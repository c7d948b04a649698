# Copyright (c) OpenMMLab. All rights reserved.
from .checkpoint import (load_state_dict_file, load_weights_safely,
                         register_checkpoint_safe_globals)

__all__ = [
    'load_state_dict_file', 'load_weights_safely',
    'register_checkpoint_safe_globals'
]
