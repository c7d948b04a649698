# Copyright (c) OpenMMLab. All rights reserved.
"""Safe checkpoint loading under torch>=2.6 (``weights_only=True``).

torch 2.6 made ``torch.load(weights_only=True)`` the default, and mmengine
0.10.7 calls ``torch.load`` without the argument, so resuming from an
mmengine checkpoint fails on the non-tensor objects that the checkpoint
stores in its ``message_hub``. Rather than turning the check off
(``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1``) we allow-list exactly the globals
that an mmengine training checkpoint pickles, once, when ``rekd_mm`` is
imported. They were measured on a real ReKD checkpoint (model, optimizer,
param scheduler, message hub, meta) with
``torch.serialization.get_unsafe_globals_in_checkpoint``:

- ``mmengine.logging.history_buffer.HistoryBuffer``: the logged scalars;
- ``numpy.core.multiarray._reconstruct``, ``numpy.ndarray``,
  ``numpy.dtype`` and the dtype classes ``Float64DType`` and
  ``Int64DType``: the buffers' value and count histories;
- ``numpy.core.multiarray.scalar``: numpy scalars such as the ``eta``
  runtime info;
- ``builtins.getattr``: ``HistoryBuffer.__getstate__`` pickles its registry
  of statistic functions (``HistoryBuffer.min`` ...), and pickle protocol 2
  (``torch.save``'s default, and torch's restricted unpickler reads no
  other form of global) writes a method of a class as
  ``getattr(HistoryBuffer, 'min')``. The real ``getattr`` would let a
  crafted file fetch any attribute of any allow-listed object, so
  ``builtins.getattr`` is bound to :func:`_history_buffer_getattr`, which
  resolves only those four statistic methods and refuses everything else.
"""
import pickle
from typing import Any, Iterable, Optional

import numpy as np
import torch
import torch.nn as nn
from mmengine.logging import HistoryBuffer, MMLogger

__all__ = [
    'mmengine_checkpoint_globals', 'register_checkpoint_safe_globals',
    'load_state_dict_file', 'load_weights_safely'
]

# The statistic methods that HistoryBuffer registers for itself.
_HISTORY_BUFFER_STATISTICS = ('min', 'max', 'current', 'mean')

_REGISTERED = False


def _history_buffer_getattr(obj: Any, name: str) -> Any:
    """``builtins.getattr`` as seen by ``torch.load(weights_only=True)``.

    Resolves ``HistoryBuffer.min``/``max``/``current``/``mean``, the only
    ``getattr`` calls in an mmengine checkpoint, and refuses any other.

    Args:
        obj (Any): The object whose attribute the pickle asks for.
        name (str): The attribute name.

    Returns:
        Any: The statistic method.
    """
    if obj is HistoryBuffer and name in _HISTORY_BUFFER_STATISTICS:
        return getattr(obj, name)
    raise pickle.UnpicklingError(
        f'refusing getattr({obj!r}, {name!r}) in a weights_only load: only '
        f'HistoryBuffer.{{{",".join(_HISTORY_BUFFER_STATISTICS)}}} are '
        'allowed. The file is not a plain mmengine checkpoint; load it only '
        'if you trust it, with torch.load(weights_only=False).')


def mmengine_checkpoint_globals() -> list:
    """The globals that an mmengine training checkpoint pickles, as
    ``torch.serialization.add_safe_globals`` entries.

    Returns:
        list: Objects and ``(object, 'module.name')`` pairs.
    """
    from numpy.core.multiarray import _reconstruct, scalar
    return [
        HistoryBuffer,
        # Named explicitly: under numpy 2 their ``__module__`` is
        # ``numpy._core.multiarray``, while checkpoints written under numpy 1
        # name ``numpy.core.multiarray``.
        (_reconstruct, 'numpy.core.multiarray._reconstruct'),
        (scalar, 'numpy.core.multiarray.scalar'),
        np.ndarray,
        np.dtype,
        type(np.dtype(np.float64)),
        type(np.dtype(np.int64)),
        (_history_buffer_getattr, 'builtins.getattr'),
    ]


def register_checkpoint_safe_globals() -> None:
    """Allow-list mmengine's checkpoint globals for ``weights_only`` loads.

    Idempotent. Everything else (e.g. ``os.system`` or any other callable a
    crafted pickle may reference) still makes ``torch.load`` refuse the
    file.
    """
    global _REGISTERED
    if not _REGISTERED and hasattr(torch.serialization, 'add_safe_globals'):
        torch.serialization.add_safe_globals(mmengine_checkpoint_globals())
        _REGISTERED = True


def _refusal_reason(err: Exception) -> str:
    """The reason in torch's weights_only error, without its page of
    generic advice."""
    boilerplate = ('Weights only load failed', 'Check the documentation',
                   '(1)', '(2)', 'Please file an issue')
    parts = [
        ' '.join(part.replace('WeightsUnpickler error:', '').split())
        for part in str(err).split('\n\n')
    ]
    parts = [p for p in parts if p and not p.startswith(boilerplate)]
    return ' '.join(parts) or type(err).__name__


def load_state_dict_file(path: str) -> dict:
    """Read a state dict from a plain state dict or an mmengine checkpoint,
    always with ``weights_only=True`` so a malicious pickle cannot run code.

    Args:
        path (str): The file.

    Returns:
        dict: The ``state_dict`` (the file itself when it is a plain one).
    """
    try:
        ckpt = torch.load(path, map_location='cpu', weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(
            f'checkpoint file {path!r} does not exist') from None
    except Exception as err:  # pickle refusals come in several types
        reason = _refusal_reason(err)
        raise RuntimeError(
            f'could not load {path!r} with weights_only=True ({reason}). '
            'Only tensors and mmengine checkpoint metadata are accepted: '
            'if you trust the file, convert it to a plain state_dict of '
            'tensors.') from err
    if isinstance(ckpt, dict) and isinstance(ckpt.get('state_dict'), dict):
        ckpt = ckpt['state_dict']
    if not isinstance(ckpt, dict):
        raise TypeError(f'{path!r} holds a {type(ckpt).__name__}, '
                        'expected a state dict')
    return ckpt


def load_weights_safely(module: nn.Module,
                        path: str,
                        prefix: str = '',
                        submodules: Optional[Iterable[str]] = None,
                        what: str = 'model') -> None:
    """Load ``prefix``-ed weights of a checkpoint into ``module``.

    A file whose keys match none of ``module``'s is an error that lists a
    few expected and found keys, instead of a silently random network.

    Args:
        module (nn.Module): The target, e.g. the teacher ``ModuleDict``.
        path (str): Checkpoint path.
        prefix (str): Key prefix in the file before the module's own keys.
            Defaults to ''.
        submodules (Iterable[str], optional): Only keys under these
            submodule names are loaded. Defaults to None (all).
        what (str): Name used in messages. Defaults to 'model'.
    """
    state = load_state_dict_file(path)
    own_keys = module.state_dict().keys()
    wanted = tuple(f'{name}.' for name in submodules) if submodules else ('', )
    picked = {
        k[len(prefix):]: v
        for k, v in state.items() if k.startswith(prefix)
        and k[len(prefix):].startswith(wanted) and k[len(prefix):] in own_keys
    }
    if not picked:
        expected = [prefix + k for k in list(own_keys)[:3]]
        found = list(state.keys())[:5]
        raise KeyError(
            f'{what} checkpoint {path!r} matches none of the {what} keys '
            f'with prefix {prefix!r}. Expected keys like {expected}; the file '
            f'has keys like {found}. Set the prefix to the part before '
            "'backbone.' in the file.")
    missing = [k for k in own_keys if k.startswith(wanted) and k not in picked]
    module.load_state_dict(picked, strict=False)
    if missing:
        MMLogger.get_current_instance().warning(
            f'{what} checkpoint {path!r}: {len(missing)} keys missing, e.g. '
            f'{missing[:5]}')
