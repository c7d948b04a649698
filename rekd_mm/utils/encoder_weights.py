# Copyright (c) rekd_mm contributors. All rights reserved.
"""Which encoder of a self-supervised checkpoint to load, and under which
keys: the online ``backbone.*``/``neck.*``, a momentum encoder
(``<name>module.0.*``/``module.1.*``) or a plain backbone state dict.

mmengine's ``load_checkpoint`` maps keys by prefix substitution only and
cannot tell which of several encoders in a file is meant, nor say what a
file holds when nothing matches; these helpers do both, on top of the
``weights_only`` loading of :mod:`rekd_mm.utils.checkpoint`.
"""
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

import torch.nn as nn
from mmengine.logging import MMLogger

from .checkpoint import (PrefixMatch, PretrainedMismatchError,
                         load_state_dict_file, match_prefixed_state)

__all__ = [
    'ENCODER_WEIGHTS', 'MOMENTUM_ENCODER_NAMES', 'EncoderMapping',
    'resolve_encoder_mapping', 'remap_encoder_state', 'load_encoder_weights'
]

# Where OpenMMLab self-supervised algorithms keep the momentum copy of
# ``nn.Sequential(backbone, neck)``: an mmengine ``BaseAveragedModel`` whose
# state is ``<name>module.0.*`` (the backbone), ``<name>module.1.*`` (the
# neck) and ``<name>steps``.
MOMENTUM_ENCODER_NAMES = (
    'encoder_k.',  # mmpretrain MoCo (v2), DenseCL; mmselfsup; ReKD's student
    'momentum_encoder.',  # mmpretrain MoCoV3
    'target_net.',  # mmpretrain BYOL
    'teacher_encoder_k.',  # ReKD's teacher
)
# The key mappings of :func:`load_encoder_weights`.
ENCODER_WEIGHTS = ('auto', 'online', 'momentum', 'backbone')


class EncoderMapping(NamedTuple):
    """Where an encoder's ``backbone.*`` and ``neck.*`` weights sit in a
    checkpoint.

    Attributes:
        weights (str): ``'online'`` (``<prefix>backbone.*``,
            ``<prefix>neck.*``), ``'momentum'`` (``<prefix>module.0.*``,
            ``<prefix>module.1.*``, an mmengine averaged model of
            ``nn.Sequential(backbone, neck)``) or ``'backbone'``
            (``<prefix>*`` are the backbone's own keys; no neck).
        prefix (str): The part of the file's keys before the above.
        rules (tuple): ``(file_prefix, module_prefix)`` pairs.
    """
    weights: str
    prefix: str
    rules: Tuple[Tuple[str, str], ...]

    @classmethod
    def build(cls, weights: str, prefix: str) -> 'EncoderMapping':
        """The mapping ``weights`` at ``prefix``."""
        if weights == 'online':
            rules = ((prefix + 'backbone.', 'backbone.'), (prefix + 'neck.',
                                                           'neck.'))
        elif weights == 'momentum':
            rules = ((prefix + 'module.0.', 'backbone.'),
                     (prefix + 'module.1.', 'neck.'))
        elif weights == 'backbone':
            rules = ((prefix, 'backbone.'), )
        else:
            raise ValueError(f'weights must be one of {ENCODER_WEIGHTS[1:]} '
                             f'here, got {weights!r}')
        return cls(weights, prefix, rules)

    def __str__(self) -> str:
        moves = ', '.join(f'{src!r} -> {dst!r}' for src, dst in self.rules)
        return f'weights={self.weights!r} (file keys {moves})'

    def file_key(self, module_key: str) -> str:
        """The file key that would load ``module_key``."""
        for src, dst in self.rules:
            if module_key.startswith(dst):
                return src + module_key[len(dst):]
        return module_key


def remap_encoder_state(state: dict,
                        mapping: EncoderMapping) -> Dict[str, Any]:
    """The keys of ``state`` that ``mapping`` selects, renamed to the
    encoder's own ``backbone.*`` / ``neck.*`` keys.

    Args:
        state (dict): A checkpoint's state dict.
        mapping (EncoderMapping): See :func:`resolve_encoder_mapping`.

    Returns:
        dict: ``{encoder_key: value}``.
    """
    out = {}
    for key, value in state.items():
        for src, dst in mapping.rules:
            if key.startswith(src):
                out[dst + key[len(src):]] = value
                break
    return out


def _key_sites(keys: List[str], marker: str) -> List[str]:
    """The distinct ``P`` (empty or ending in ``'.'``) such that some key
    starts with ``P + marker``."""
    sites = set()
    for key in keys:
        start = key.find(marker)
        while start >= 0:
            if start == 0 or key[start - 1] == '.':
                sites.add(key[:start])
                break
            start = key.find(marker, start + 1)
    return sorted(sites)


def _momentum_sites(keys: List[str]) -> List[str]:
    return [
        name for name in MOMENTUM_ENCODER_NAMES if any(
            k.startswith(name + 'module.') for k in keys)
    ]


def _heads(keys: List[str]) -> List[str]:
    return sorted({k.split('.')[0] + ('.' if '.' in k else '') for k in keys})


def _inventory(keys: List[str]) -> str:
    """What a file holds, for messages."""
    return (f'online encoders at prefixes {_key_sites(keys, "backbone.")} '
            f'(before backbone.), momentum encoders {_momentum_sites(keys)}, '
            f'key heads {_heads(keys)[:12]}, keys like {keys[:4]}')


_MAPPING_HINT = (
    "Set the prefix ({key}.prefix) and the mapping ({key}.weights): "
    "'online' loads <prefix>backbone.* and <prefix>neck.* (prefix 'teacher.' "
    "for the teacher of a ReKD checkpoint); 'momentum' loads "
    "<prefix>module.0.* and <prefix>module.1.* (prefix 'target_net.' for "
    "BYOL, 'momentum_encoder.' for MoCo v3, 'encoder_k.' for MoCo v2 and "
    "DenseCL); 'backbone' loads a plain backbone state dict whose keys "
    'start with <prefix>.')


def resolve_encoder_mapping(state: dict,
                            module: nn.Module,
                            weights: str = 'auto',
                            prefix: Optional[str] = None,
                            checkpoint: str = '',
                            what: str = 'encoder',
                            cfg_key: str = 'weights') -> EncoderMapping:
    """Decide which keys of ``state`` hold the encoder to load.

    ``'online'``, ``'momentum'`` and ``'backbone'`` are taken as given;
    without a ``prefix`` the momentum encoder is the one of
    :data:`MOMENTUM_ENCODER_NAMES` that the file holds, and a plain
    backbone's keys start with ``''`` or ``'backbone.'``, whichever the file
    uses. ``'auto'`` picks exactly one mapping, by these rules in order:

    1. with a ``prefix``: the online encoder there if the file has
       ``<prefix>backbone.*``, else the momentum encoder there if it has
       ``<prefix>module.0.*``, else a plain backbone at ``prefix``;
    2. the online encoder, if the file holds exactly one
       (``<P>backbone.*``; with no ``<P>neck.*`` beside it, that backbone
       alone): the weights every OpenMMLab downstream config loads, and
       the ones the methods' own evaluations use;
    3. else the momentum encoder, if the file holds exactly one;
    4. else a plain backbone state dict (keys of ``module.backbone``).

    Two online encoders (a ReKD checkpoint: student and teacher) or two
    momentum encoders and nothing else are ambiguous; a file that fits none
    of the rules is empty for this module. Both are a
    :class:`PretrainedMismatchError` naming the file and the prefixes found.

    Args:
        state (dict): The checkpoint's state dict.
        module (nn.Module): The target, with ``backbone`` and ``neck``
            children.
        weights (str): One of :data:`ENCODER_WEIGHTS`. Defaults to
            ``'auto'``.
        prefix (str, optional): See :class:`EncoderMapping`. Defaults to
            None (found in the file).
        checkpoint (str): The file, for messages.
        what (str): The module, for messages. Defaults to ``'encoder'``.
        cfg_key (str): The config dict holding ``weights`` and ``prefix``,
            for messages. Defaults to ``'weights'``.

    Returns:
        EncoderMapping: The mapping.
    """
    if weights not in ENCODER_WEIGHTS:
        raise ValueError(f'{cfg_key}.weights must be one of '
                         f'{ENCODER_WEIGHTS}, got {weights!r}')
    if prefix is not None and prefix and not prefix.endswith('.'):
        prefix += '.'
    keys = list(state)
    hint = _MAPPING_HINT.format(key=cfg_key)

    def error(problem: str) -> PretrainedMismatchError:
        return PretrainedMismatchError(
            f'{what}: checkpoint {checkpoint!r} {problem}.\n'
            f'  It holds {_inventory(keys)}.\n  {hint}')

    def has(start: str) -> bool:
        return any(k.startswith(start) for k in keys)

    if weights == 'online':
        return EncoderMapping.build('online', prefix or '')
    if weights == 'momentum':
        if prefix is not None:
            return EncoderMapping.build('momentum', prefix)
        found = _momentum_sites(keys)
        if len(found) != 1:
            raise error(
                f"holds {len(found)} momentum encoders {found} among the "
                f'known names {list(MOMENTUM_ENCODER_NAMES)} (weights='
                "'momentum' needs exactly one, or the prefix naming it)")
        return EncoderMapping.build('momentum', found[0])
    backbone_keys = list(module.backbone.state_dict())
    if weights == 'backbone':
        if prefix is not None:
            return EncoderMapping.build('backbone', prefix)
        found = [
            p for p in ('', 'backbone.')
            if any(p + k in state for k in backbone_keys)
        ]
        if len(found) != 1:
            raise error(f"has the backbone's keys under {len(found)} of the "
                        "prefixes ['', 'backbone.'] (weights='backbone' needs "
                        'exactly one, or the prefix)')
        return EncoderMapping.build('backbone', found[0])

    # weights == 'auto'
    if prefix is not None:
        if has(prefix + 'backbone.'):
            return EncoderMapping.build('online', prefix)
        if has(prefix + 'module.0.'):
            return EncoderMapping.build('momentum', prefix)
        return EncoderMapping.build('backbone', prefix)
    online = _key_sites(keys, 'backbone.')
    if len(online) > 1:
        raise error(
            f"holds {len(online)} online encoders, at prefixes {online} "
            "(a ReKD checkpoint: the student at '' and the teacher at "
            "'teacher.'): weights='auto' cannot choose")
    if online:
        if has(online[0] + 'neck.'):
            return EncoderMapping.build('online', online[0])
        return EncoderMapping.build('backbone', online[0] + 'backbone.')
    momentum = _momentum_sites(keys)
    if len(momentum) > 1:
        raise error(
            f'holds {len(momentum)} momentum encoders {momentum} and no '
            "online one: weights='auto' cannot choose")
    if momentum:
        return EncoderMapping.build('momentum', momentum[0])
    if any(k in state for k in backbone_keys):
        return EncoderMapping.build('backbone', '')
    first = backbone_keys[0] if backbone_keys else ''
    raise error(f"holds no {what} weights that weights='auto' recognises: "
                f"expected keys like 'backbone.{first}' (online), "
                f"'target_net.module.0.{first}' (momentum) or '{first}' "
                '(a plain backbone)')


def load_encoder_weights(
        module: nn.Module,
        checkpoint: str,
        weights: str = 'auto',
        prefix: Optional[str] = None,
        strict: bool = True,
        what: str = 'encoder',
        cfg_key: str = 'weights',
        missing_hint: str = '') -> Tuple[EncoderMapping, PrefixMatch]:
    """Load an encoder (``module.backbone`` + ``module.neck``) from any
    OpenMMLab self-supervised checkpoint, with ``weights_only=True``.

    The mapping (:func:`resolve_encoder_mapping`) is logged. A mapping that
    matches no key, or a key of another shape, is always an error; a module
    key that the file leaves at its random initialisation is an error when
    ``strict``, otherwise a warning. Every message names the file.

    Args:
        module (nn.Module): The target, with ``backbone`` and ``neck``.
        checkpoint (str): Path (or URL) of the checkpoint or state dict.
        weights (str): See :func:`resolve_encoder_mapping`. Defaults to
            ``'auto'``.
        prefix (str, optional): See :func:`resolve_encoder_mapping`.
            Defaults to None.
        strict (bool): Whether a missing key is an error. Defaults to True.
        what (str): The module, for messages. Defaults to ``'encoder'``.
        cfg_key (str): The config dict of ``weights`` and ``prefix``, for
            messages. Defaults to ``'weights'``.
        missing_hint (str): What to do about missing keys, appended to their
            message. Defaults to ''.

    Returns:
        Tuple[EncoderMapping, PrefixMatch]: The mapping used and what was
        loaded.
    """
    state = load_state_dict_file(checkpoint)
    mapping = resolve_encoder_mapping(state, module, weights, prefix,
                                      checkpoint, what, cfg_key)
    remapped = remap_encoder_state(state, mapping)
    match = match_prefixed_state(module, remapped, '')
    own = module.state_dict()
    total = len(own)
    if not match.state or match.mismatched:
        expected = [mapping.file_key(k) for k in list(own)[:4]]
        lines = [
            f'{what}: checkpoint {checkpoint!r} matches {len(match.state)} '
            f'of {total} {what} keys with {mapping}.',
            f'  expected file keys like {expected}',
            f'  the file holds {_inventory(list(state))}'
        ]
        if match.mismatched:
            lines.append('  shape mismatches (key, file, model): '
                         f'{match.mismatched[:3]}')
        lines.append('  ' + _MAPPING_HINT.format(key=cfg_key) +
                     ' Or fix the config so that the module is the '
                     "checkpoint's architecture.")
        raise PretrainedMismatchError('\n'.join(lines))
    logger = MMLogger.get_current_instance()
    if match.missing:
        # File keys the mapping took that the module lacks: usually the
        # same part under other names (another neck type).
        unexpected = [mapping.file_key(k) for k in remapped if k not in own]
        message = (
            f'{what}: checkpoint {checkpoint!r} ({mapping}) leaves '
            f'{len(match.missing)} of {total} {what} keys at their random '
            f'initialisation: {match.missing[:5]}'
            f"{' ...' if len(match.missing) > 5 else ''}.")
        if unexpected:
            message += (
                f' The file has, under the same mapping, '
                f'{len(unexpected)} keys that the {what} lacks: '
                f"{unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}.")
        if missing_hint:
            message += ' ' + missing_hint
        if strict:
            raise PretrainedMismatchError(message)
        logger.warning(message)
    module.load_state_dict(match.state, strict=False)
    logger.info(f'{what}: loaded {len(match.state)} of {total} keys from '
                f'{checkpoint} with {mapping}'
                f"{' (chosen by weights=auto)' if weights == 'auto' else ''}")
    return mapping, match
