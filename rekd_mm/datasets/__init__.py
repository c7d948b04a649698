# Copyright (c) rekd_mm contributors. All rights reserved.
from .collate import (default_collate, pseudo_collate,
                      register_scope_tolerant_collate)
from .transforms import *  # noqa: F401,F403
from .transforms import __all__ as _transforms_all

# `pkg::` config bases put `_scope_` into collate_fn; see collate.py.
register_scope_tolerant_collate()

__all__ = _transforms_all + [
    'default_collate', 'pseudo_collate', 'register_scope_tolerant_collate'
]
