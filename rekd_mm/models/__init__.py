# Copyright (c) rekd_mm contributors. All rights reserved.
from .algorithms import *  # noqa: F401,F403
from .algorithms import __all__ as _algorithms_all
from .backbones import *  # noqa: F401,F403
from .backbones import __all__ as _backbones_all
from .heads import *  # noqa: F401,F403
from .heads import __all__ as _heads_all
from .utils import *  # noqa: F401,F403
from .utils import __all__ as _utils_all

# Without an explicit __all__, `from .models import *` in rekd_mm/__init__.py
# also exports the name `utils` and rebinds `rekd_mm.utils` to
# `rekd_mm.models.utils`.
__all__ = (_algorithms_all + _backbones_all + _heads_all + _utils_all)
