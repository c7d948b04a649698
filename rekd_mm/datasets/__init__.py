# Copyright (c) OpenMMLab. All rights reserved.
from .transforms import *  # noqa: F401,F403
from .transforms import __all__ as _transforms_all

__all__ = _transforms_all
