# Copyright (c) rekd_mm contributors. All rights reserved.
"""rekd_mm: ReKD (relation knowledge distillation) for mmpretrain.

Importing the package registers its modules in mmpretrain's registries
(``MODELS``, ``HOOKS``) and allow-lists mmengine's checkpoint globals for
``torch.load(weights_only=True)``, and makes mmengine's ``CheckpointLoader``
read every local or remote checkpoint with ``weights_only=True``.
"""
from .datasets import *  # noqa: F401,F403
from .engine import *  # noqa: F401,F403
from .evaluation import *  # noqa: F401,F403
from .models import *  # noqa: F401,F403
from .utils import (register_checkpoint_safe_globals,
                    register_safe_checkpoint_loaders)
from .version import __version__

register_checkpoint_safe_globals()
# Remote checkpoints (http(s)://, torchvision://, open-mmlab://, ...) are
# downloaded and read with weights_only=True, never executed as pickles.
register_safe_checkpoint_loaders()

__all__ = ['__version__']
