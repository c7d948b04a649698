# Copyright (c) OpenMMLab. All rights reserved.
"""rekd_mm: ReKD (relation knowledge distillation) for mmpretrain.

Importing the package registers its modules in mmpretrain's registries
(``MODELS``, ``HOOKS``) and allow-lists mmengine's checkpoint globals for
``torch.load(weights_only=True)``.
"""
from .datasets import *  # noqa: F401,F403
from .engine import *  # noqa: F401,F403
from .evaluation import *  # noqa: F401,F403
from .models import *  # noqa: F401,F403
from .utils import register_checkpoint_safe_globals
from .version import __version__

register_checkpoint_safe_globals()

__all__ = ['__version__']
