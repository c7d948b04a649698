# Copyright (c) rekd_mm contributors. All rights reserved.
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

- ``mmengine.logging.history_buffer.HistoryBuffer``: the logged scalars,
  rebuilt through :class:`_SafeHistoryBuffer`, whose ``__setstate__`` cannot
  rewrite the statistic registry that every HistoryBuffer shares;
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

It also holds the one path that loads the ``prefix``-ed part of a
checkpoint into a module (the kNN / linear-probe backbones,
:class:`StrictPretrainedCheckHook`) and the key mapping of encoder
checkpoints (:func:`load_encoder_weights`, the offline teacher: online or
momentum encoder of any OpenMMLab self-supervised method, or a plain
backbone). A ReKD checkpoint holds the student under ``backbone.`` and the
teacher under ``teacher.backbone.``; loading the wrong prefix must fail
loudly, because mmengine's non-strict load only warns and leaves a random
backbone whose accuracy looks merely "low" (mmselfsup#330).
"""
import os
import os.path as osp
import pickle
import zipfile
from typing import Any, Dict, List, NamedTuple, Optional

import numpy as np
import torch
import torch.nn as nn
from mmengine.logging import HistoryBuffer, MMLogger
from mmengine.runner.checkpoint import CheckpointLoader

__all__ = [
    'mmengine_checkpoint_globals', 'register_checkpoint_safe_globals',
    'CheckpointLoadError', 'torch_load_weights_only', 'load_state_dict_file',
    'PretrainedMismatchError', 'PrefixMatch', 'match_prefixed_state',
    'describe_mismatch', 'load_prefixed_weights'
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
    if (obj is HistoryBuffer or obj is _SafeHistoryBuffer) \
            and name in _HISTORY_BUFFER_STATISTICS:
        return getattr(HistoryBuffer, name)
    raise pickle.UnpicklingError(
        f'refusing getattr({obj!r}, {name!r}) in a weights_only load: only '
        f'HistoryBuffer.{{{",".join(_HISTORY_BUFFER_STATISTICS)}}} are '
        'allowed. The file is not a plain mmengine checkpoint; load it only '
        'if you trust it, with torch.load(weights_only=False).')


_HISTORY_BUFFER_STATE_KEYS = ('max_length', '_log_history', '_count_history',
                              'statistics_methods')


class _SafeHistoryBuffer(HistoryBuffer):
    """What a ``weights_only`` load builds for a pickled ``HistoryBuffer``.

    mmengine's ``HistoryBuffer.__setstate__`` copies the pickled
    ``statistics_methods`` into the registry that *every* HistoryBuffer
    shares, so a crafted checkpoint could rebind e.g. ``'mean'`` to
    ``HistoryBuffer.max`` (or any other allow-listed callable) for the whole
    process. This ``__setstate__`` accepts only the stock entries
    (``'min'`` -> ``HistoryBuffer.min`` ...), never writes the class
    registry, accepts only a HistoryBuffer's own attributes, and then turns
    the object into a plain ``HistoryBuffer`` (so it pickles, compares and
    logs exactly like one).
    """

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, dict):
            raise pickle.UnpicklingError(
                'refusing a HistoryBuffer whose pickled state is a '
                f'{type(state).__name__}, not a dict')
        unknown = set(state) - set(_HISTORY_BUFFER_STATE_KEYS)
        if unknown:
            raise pickle.UnpicklingError(
                f'refusing a HistoryBuffer with unknown attributes '
                f'{sorted(map(str, unknown))}; a HistoryBuffer pickles only '
                f'{list(_HISTORY_BUFFER_STATE_KEYS)}')
        methods = state.get('statistics_methods', {})
        if not isinstance(methods, dict):
            raise pickle.UnpicklingError(
                'refusing a HistoryBuffer whose statistics_methods is a '
                f'{type(methods).__name__}')
        for name, method in methods.items():
            stock = getattr(HistoryBuffer, name, None) \
                if name in _HISTORY_BUFFER_STATISTICS else None
            if stock is None or method is not stock:
                raise pickle.UnpicklingError(
                    f'refusing a HistoryBuffer that registers the statistic '
                    f'{name!r} as {method!r}: a weights_only load accepts '
                    f'only the stock HistoryBuffer.{{'
                    f'{",".join(_HISTORY_BUFFER_STATISTICS)}}} methods, and '
                    'never changes the registry shared by every '
                    'HistoryBuffer.')
        self.__class__ = HistoryBuffer
        self._set_default_statistics()
        self.__dict__.update(
            {k: v
             for k, v in state.items() if k != 'statistics_methods'})


def mmengine_checkpoint_globals() -> list:
    """The globals that an mmengine training checkpoint pickles, as
    ``torch.serialization.add_safe_globals`` entries.

    Returns:
        list: Objects and ``(object, 'module.name')`` pairs.
    """
    from numpy.core.multiarray import _reconstruct, scalar
    return [
        # Under HistoryBuffer's own name, a subclass whose __setstate__
        # cannot touch the class-wide registry of statistic methods.
        (_SafeHistoryBuffer, 'mmengine.logging.history_buffer.HistoryBuffer'),
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


# BN's step counter carries no weights; files converted from other
# frameworks often lack it, which must not count as a missing weight.
_IGNORED_SUFFIXES = ('num_batches_tracked', )


class CheckpointLoadError(RuntimeError, pickle.UnpicklingError):
    """A checkpoint could not be read: missing pieces, not a torch file, or
    refused by ``weights_only=True``. The message names the file or URL.

    Both a ``RuntimeError`` and a ``pickle.UnpicklingError``, the two types
    that callers of ``torch.load`` catch."""


def _describe_file(path: str) -> str:
    try:
        size = os.path.getsize(path)
    except OSError:
        return ''
    return f'{size} bytes'


def torch_load_weights_only(path: str,
                            map_location: Any = 'cpu',
                            name: Optional[str] = None) -> Any:
    """``torch.load(path, weights_only=True)`` with errors that name the
    file.

    A missing file is a ``FileNotFoundError``; an empty, truncated or
    non-torch file and a pickle that the ``weights_only`` allow-list refuses
    are a :class:`CheckpointLoadError` (instead of ``EOFError``,
    ``KeyError: 101`` or a page of generic advice).

    Args:
        path (str): A local file.
        map_location (Any): As in ``torch.load``. Defaults to ``'cpu'``.
        name (str, optional): How to call the file in messages, e.g. the URL
            it was downloaded from. Defaults to ``path``.

    Returns:
        Any: The loaded object.
    """
    name = path if name is None else name
    path = osp.expanduser(path)
    if not osp.exists(path):
        raise FileNotFoundError(f'checkpoint file {name!r} does not exist')
    if osp.isdir(path):
        raise CheckpointLoadError(
            f'checkpoint {name!r} is a directory, not a checkpoint file')
    if osp.getsize(path) == 0:
        raise CheckpointLoadError(
            f'checkpoint {name!r} is empty (0 bytes): it was never written '
            'completely (a crash or full disk while saving?). Use another '
            'checkpoint, e.g. the previous iter_*.pth of the work directory.')
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # pickle refusals come in several types
        reason = _refusal_reason(err)
        if isinstance(err, (EOFError, KeyError, zipfile.BadZipFile)) or \
                'zip archive' in reason or 'central directory' in reason:
            raise CheckpointLoadError(
                f'checkpoint {name!r} ({_describe_file(path)}) is truncated '
                f'or not a torch checkpoint ({type(err).__name__}: '
                f'{reason}). Use another checkpoint, e.g. the previous '
                'iter_*.pth of the work directory.') from err
        raise CheckpointLoadError(
            f'could not load {name!r} with weights_only=True ({reason}). '
            'Only tensors and mmengine checkpoint metadata are accepted: '
            'if you trust the file, convert it to a plain state_dict of '
            'tensors.') from err


def load_state_dict_file(path: str) -> dict:
    """Read a state dict from a plain state dict or an mmengine checkpoint,
    always with ``weights_only=True`` so a malicious pickle cannot run code.

    Local files are read here; URLs and ``torchvision://``-style names go
    through mmengine's ``CheckpointLoader``, whose remote schemes ``import
    rekd_mm`` replaces with downloads loaded ``weights_only=True`` (see
    :mod:`rekd_mm.utils.safe_loaders`).

    Args:
        path (str): The file, or a URL / ``scheme://`` name.

    Returns:
        dict: The ``state_dict`` (the file itself when it is a plain one).
    """
    if osp.isfile(path) or '://' not in path:
        ckpt = torch_load_weights_only(path)
    else:
        ckpt = CheckpointLoader.load_checkpoint(path, map_location='cpu')
    if isinstance(ckpt, dict) and isinstance(ckpt.get('state_dict'), dict):
        ckpt = ckpt['state_dict']
    if not isinstance(ckpt, dict):
        raise TypeError(f'{path!r} holds a {type(ckpt).__name__}, '
                        'expected a state dict')
    return ckpt


class PretrainedMismatchError(KeyError):
    """A checkpoint's keys do not fit the module to load (a ``KeyError``
    whose message keeps its line breaks)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ''


class PrefixMatch(NamedTuple):
    """How a checkpoint's ``prefix``-ed keys match a module's state dict.

    Attributes:
        state (dict): The matched ``{module_key: tensor}``.
        missing (list): Module keys absent from the file.
        mismatched (list): ``(key, file_shape, module_shape)`` triples.
        found (list): A few keys of the file, for messages.
        heads (list): The distinct first components of the file's keys.
    """
    state: Dict[str, torch.Tensor]
    missing: List[str]
    mismatched: List[tuple]
    found: List[str]
    heads: List[str]


def match_prefixed_state(module: nn.Module, state: dict,
                         prefix: str) -> PrefixMatch:
    """Match ``prefix``-ed keys of ``state`` to ``module``'s state dict.

    Args:
        module (nn.Module): The target module.
        state (dict): A full state dict, e.g. a ReKD checkpoint's.
        prefix (str): The part of the file's keys before the module's own
            keys, e.g. ``'backbone.'`` or ``'teacher.backbone.'``.

    Returns:
        PrefixMatch: The matched, missing and shape-mismatched keys.
    """
    own = module.state_dict()
    matched, mismatched = {}, []
    for key, value in state.items():
        if not key.startswith(prefix):
            continue
        name = key[len(prefix):]
        if name not in own:
            continue
        if tuple(value.shape) != tuple(own[name].shape):
            mismatched.append(
                (name, tuple(value.shape), tuple(own[name].shape)))
        else:
            matched[name] = value
    mismatched_keys = {m[0] for m in mismatched}
    missing = [
        k for k in own if k not in matched
        and not k.endswith(_IGNORED_SUFFIXES) and k not in mismatched_keys
    ]
    # Keys the prefix selected come first: they show what the file holds
    # where the module was expected.
    found = [k for k in state if k.startswith(prefix)][:4]
    found += [k for k in state if k not in found][:6 - len(found)]
    heads = sorted(
        {k.split('.')[0] + ('.' if '.' in k else '')
         for k in state})
    return PrefixMatch(matched, missing, mismatched, found, heads)


def describe_mismatch(module: nn.Module, match: PrefixMatch, prefix: str,
                      checkpoint: str, what: str) -> str:
    """A message listing a few expected and found keys.

    Args:
        module (nn.Module): The target module.
        match (PrefixMatch): The result of :func:`match_prefixed_state`.
        prefix (str): The prefix that was tried.
        checkpoint (str): The checkpoint, for the message.
        what (str): What the module is, e.g. ``'teacher'``.

    Returns:
        str: A multi-line message.
    """
    expected = [prefix + k for k in list(module.state_dict())[:4]]
    lines = [
        f'{what}: checkpoint {checkpoint!r} matches '
        f'{len(match.state)} of {len(module.state_dict())} keys with prefix '
        f'{prefix!r}.', f'  expected keys like {expected}',
        f'  the file has keys like {match.found}',
        f'  and key heads {match.heads[:12]}'
    ]
    if match.mismatched:
        lines.append(f'  shape mismatches (key, file, model): '
                     f'{match.mismatched[:3]}')
    if match.missing:
        lines.append(f'  missing, e.g. {match.missing[:4]}')
    lines.append("  Set the prefix to the part of the file's keys before the "
                 "module's own keys (a ReKD checkpoint: 'backbone.' for the "
                 "student backbone, 'teacher.backbone.' for the teacher "
                 "backbone, 'teacher.' for the whole teacher) or fix the "
                 'config so that the module is the pretrained architecture.')
    return '\n'.join(lines)


def load_prefixed_weights(module: nn.Module,
                          checkpoint: str,
                          prefix: str = 'backbone.',
                          strict: bool = True,
                          what: str = 'backbone') -> PrefixMatch:
    """Load ``prefix``-ed weights of a checkpoint into ``module``.

    A file that matches no key of ``module``, or holds a key with another
    shape, is always a :class:`PretrainedMismatchError` listing a few
    expected and found keys, never a silently (partly) random network.

    Args:
        module (nn.Module): The target, e.g. a freshly built backbone or the
            teacher ``ModuleDict``.
        checkpoint (str): Path (or URL) of a checkpoint or plain state dict,
            read with ``weights_only=True``.
        prefix (str): Key prefix in the file before the module's own keys.
            Defaults to ``'backbone.'``.
        strict (bool): Whether a missing key is an error too; otherwise it
            is a warning. Defaults to True.
        what (str): Name used in messages. Defaults to ``'backbone'``.

    Returns:
        PrefixMatch: What was loaded.
    """
    match = match_prefixed_state(module, load_state_dict_file(checkpoint),
                                 prefix)
    if not match.state or match.mismatched or (strict and match.missing):
        raise PretrainedMismatchError(
            describe_mismatch(module, match, prefix, checkpoint, what))
    if match.missing:
        MMLogger.get_current_instance().warning(
            describe_mismatch(module, match, prefix, checkpoint, what))
    module.load_state_dict(match.state, strict=False)
    return match
