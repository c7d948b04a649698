# Copyright (c) rekd_mm contributors. All rights reserved.
"""mmengine's collate functions, tolerant of the ``_scope_`` key.

A config whose bases come from another package (``_base_ =
'mmpretrain::...'``) gets ``_scope_='mmpretrain'`` in every dict that has a
``type``, ``collate_fn=dict(type='default_collate')`` included. mmengine
0.10.7's ``Runner.build_dataloader`` looks the collate function up with
``FUNCTIONS.get(type)`` and binds every other key with ``functools.partial``,
so the first batch fails with ``TypeError: default_collate() got an
unexpected keyword argument '_scope_'``. Every entry point (``tools/train.py``,
mmpretrain's own tools, a hand-built ``Runner``) goes through that lookup in
mmengine's root ``FUNCTIONS`` registry, so importing ``rekd_mm`` (or naming
it in ``custom_imports``) replaces the two collate functions there by
wrappers that drop ``_scope_`` and call mmengine's originals unchanged.

Dropping the scope loses nothing: mmpretrain, mmdet and mmseg register no
collate function of their own under these names, so a scoped lookup would
find mmengine's anyway.
"""
from typing import Any, Sequence

from mmengine.dataset import default_collate as _mmengine_default_collate
from mmengine.dataset import pseudo_collate as _mmengine_pseudo_collate
from mmengine.registry import FUNCTIONS

__all__ = [
    'default_collate', 'pseudo_collate', 'register_scope_tolerant_collate'
]


# Module-level functions (not closures), so that a DataLoader started with
# the 'spawn' method can pickle them by reference.
def default_collate(data_batch: Sequence, _scope_: Any = None) -> Any:
    """mmengine's ``default_collate``; ``_scope_`` is accepted and ignored.

    Args:
        data_batch (Sequence): Samples from the data set.
        _scope_ (Any): The scope a ``pkg::`` config base adds. Unused.

    Returns:
        Any: The batch, tensors stacked.
    """
    return _mmengine_default_collate(data_batch)


def pseudo_collate(data_batch: Sequence, _scope_: Any = None) -> Any:
    """mmengine's ``pseudo_collate``; ``_scope_`` is accepted and ignored.

    Args:
        data_batch (Sequence): Samples from the data set.
        _scope_ (Any): The scope a ``pkg::`` config base adds. Unused.

    Returns:
        Any: The batch, tensors not stacked.
    """
    return _mmengine_pseudo_collate(data_batch)


def register_scope_tolerant_collate() -> None:
    """Register :func:`default_collate` and :func:`pseudo_collate` under
    mmengine's names in its root ``FUNCTIONS`` registry (idempotent)."""
    for func in (default_collate, pseudo_collate):
        FUNCTIONS.register_module(name=func.__name__, force=True, module=func)
