# Copyright (c) OpenMMLab. All rights reserved.
"""Load and check the prefixed sub-state-dict of a checkpoint.

A ReKD checkpoint holds the student under ``backbone.`` and the teacher
under ``teacher.backbone.``. Loading the wrong prefix must fail loudly:
mmengine's non-strict load only warns, leaving a random backbone whose
linear-probe or kNN accuracy looks merely "low" (mmselfsup#330).
"""
import os.path as osp
from typing import Dict, List, NamedTuple

import torch
import torch.nn as nn
from mmengine.runner.checkpoint import CheckpointLoader

from rekd_mm.utils.checkpoint import load_state_dict_file

__all__ = [
    'PretrainedMismatchError', 'PrefixMatch', 'read_state_dict',
    'match_prefixed_state', 'describe_mismatch', 'load_prefixed_weights'
]

# BN's step counter carries no weights; files converted from other
# frameworks often lack it, which must not count as a missing weight.
_IGNORED_SUFFIXES = ('num_batches_tracked', )


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


def read_state_dict(checkpoint: str) -> dict:
    """Read a state dict with ``weights_only=True``.

    Local files go through :func:`load_state_dict_file`; URLs and
    ``torchvision://``-style names through mmengine's loader (whose
    ``torch.load`` defaults to ``weights_only=True`` in torch>=2.6).

    Args:
        checkpoint (str): Path or URL.

    Returns:
        dict: The state dict.
    """
    if osp.isfile(checkpoint) or '://' not in checkpoint:
        return load_state_dict_file(checkpoint)
    ckpt = CheckpointLoader.load_checkpoint(checkpoint, map_location='cpu')
    return ckpt.get('state_dict', ckpt)


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
    missing = [
        k for k in own
        if k not in matched and not k.endswith(_IGNORED_SUFFIXES)
        and k not in {m[0]
                      for m in mismatched}
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
    """A message listing a few expected and found keys."""
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
    lines.append("  Fix the prefix (a ReKD checkpoint: 'backbone.' for the "
                 "student, 'teacher.backbone.' for the teacher) or the "
                 'backbone config so that it is the pretrained architecture.')
    return '\n'.join(lines)


def load_prefixed_weights(module: nn.Module,
                          checkpoint: str,
                          prefix: str = 'backbone.',
                          strict: bool = True,
                          what: str = 'backbone') -> PrefixMatch:
    """Load ``prefix``-ed weights of a checkpoint into ``module``.

    Args:
        module (nn.Module): The target, e.g. a freshly built backbone.
        checkpoint (str): Path (or URL) of a checkpoint or plain state dict,
            read with ``weights_only=True``.
        prefix (str): Key prefix in the file. Defaults to ``'backbone.'``.
        strict (bool): Whether a missing or mis-shaped key is an error too
            (a file that matches no key always is). Defaults to True.
        what (str): Name used in messages. Defaults to ``'backbone'``.

    Returns:
        PrefixMatch: What was loaded.
    """
    match = match_prefixed_state(module, read_state_dict(checkpoint), prefix)
    if not match.state or (strict and (match.missing or match.mismatched)):
        raise PretrainedMismatchError(
            describe_mismatch(module, match, prefix, checkpoint, what))
    module.load_state_dict(match.state, strict=False)
    return match
