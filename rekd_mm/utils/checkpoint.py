# Copyright (c) OpenMMLab. All rights reserved.
"""Safe checkpoint loading under torch>=2.6 (``weights_only=True``).

torch 2.6 made ``torch.load(weights_only=True)`` the default, and mmengine
0.10.7 calls ``torch.load`` without the argument, so resuming from an
mmengine checkpoint fails on the non-tensor objects that the checkpoint
stores in its ``message_hub`` and ``meta``. Rather than turning the check off
(``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1``) we allow-list exactly the globals
that mmengine writes, once, when ``rekd_mm`` is imported.
"""
from typing import Iterable, Optional

import numpy as np
import torch
import torch.nn as nn
from mmengine.logging import HistoryBuffer, MMLogger

_REGISTERED = False


def mmengine_checkpoint_globals() -> list:
    """The globals that an mmengine training checkpoint pickles.

    ``message_hub`` holds :class:`HistoryBuffer` objects whose values are
    numpy arrays and scalars; numpy reconstructs those through
    ``_reconstruct``, ``ndarray``, ``dtype``, ``scalar`` and the concrete
    dtype classes.
    """
    from numpy.core.multiarray import _reconstruct, scalar
    dtype_classes = [type(np.dtype(t)) for t in
                     (np.float64, np.float32, np.int64, np.int32, np.bool_)]
    return [HistoryBuffer, _reconstruct, scalar, np.ndarray, np.dtype,
            *dtype_classes]


def register_checkpoint_safe_globals() -> None:
    """Allow-list mmengine's checkpoint globals for ``weights_only`` loads.

    Idempotent. Everything else (e.g. arbitrary callables a crafted pickle
    may reference) still makes ``torch.load`` refuse the file.
    """
    global _REGISTERED
    if not _REGISTERED and hasattr(torch.serialization, 'add_safe_globals'):
        torch.serialization.add_safe_globals(mmengine_checkpoint_globals())
        _REGISTERED = True


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
        raise RuntimeError(
            f'could not load {path!r} with weights_only=True ({err}). '
            'Only tensors and mmengine checkpoint metadata are accepted; '
            'convert the file to a plain state_dict of tensors.') from err
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
        for k, v in state.items()
        if k.startswith(prefix) and k[len(prefix):].startswith(wanted)
        and k[len(prefix):] in own_keys
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
