# Copyright (c) rekd_mm contributors. All rights reserved.
from .hooks import *  # noqa: F401,F403
from .hooks import __all__ as _hooks_all

__all__ = _hooks_all
