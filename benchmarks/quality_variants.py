# Copyright (c) rekd_mm contributors. All rights reserved.
"""The variant grammar of ``benchmarks/quality.py``: what a variant name
(``mocov2``, ``rekd_no_relation_kd1``, ``untrained``, ...) changes, and the
``--cfg-options`` that turn the paired MoCo v2 / ReKD configs into it.

Imported by ``quality.py`` (which puts this folder on ``sys.path``); kept
free of torch at import time, like ``train_runs.py``.
"""
import os.path as osp
import re
from typing import Dict, List, Optional

from train_runs import DATASETS, REPO_ROOT

__all__ = [
    'REFERENCES', 'parse_variant', 'variant_cfg_options', 'miner_hook_index',
    'offline_teachers'
]

_MODIFIER = re.compile(r'_(?:k(?P<k>\d+)|kd(?P<kd>\d+(?:\.\d+)?|\.\d+)'
                       r'|theta(?P<theta>-?\d+(?:\.\d+)?|-?\.\d+)'
                       r'|(?P<flag>no_relation|offline|oracle))')

# Reference rows: no self-supervised pretraining (docs/quality.md).
# ``untrained``: a freshly initialised student; ``pixels``: raw pixels;
# ``supervised``: the student trained with labels and cross-entropy at the
# same budget (the ceiling).
REFERENCES = ('untrained', 'pixels', 'supervised')


def parse_variant(name: str) -> dict:
    """Parse a variant name into what it changes.

    Args:
        name (str): ``'mocov2'`` or ``'rekd'`` followed by any of the
            modifiers ``_k{K}``, ``_theta{Θ}``, ``_kd{W}``,
            ``_no_relation``, ``_offline``, ``_oracle`` (each at most once).

    Returns:
        dict: ``name``, ``algorithm`` (``'mocov2'`` or ``'rekd'``),
        ``num_prototypes`` (int or None), ``threshold`` (float or None),
        ``kd_weight`` (float or None), ``no_relation``, ``offline`` and
        ``oracle`` (bool).
    """
    spec = dict(
        name=name,
        algorithm=None,
        num_prototypes=None,
        threshold=None,
        kd_weight=None,
        no_relation=False,
        offline=False,
        oracle=False)
    grammar = ("'mocov2', 'untrained', 'pixels', 'supervised', or 'rekd' "
               'followed by any of _k{K}, _theta{Θ}, _kd{W}, _no_relation, '
               "_offline, _oracle (e.g. 'rekd_k50_theta0.7')")
    if name in REFERENCES:
        spec['algorithm'] = name
        return spec
    if name == 'mocov2':
        spec['algorithm'] = 'mocov2'
        return spec
    if not name.startswith('rekd'):
        raise ValueError(f'unknown variant {name!r}: expected {grammar}')
    spec['algorithm'] = 'rekd'
    rest, seen = name[len('rekd'):], set()
    while rest:
        match = _MODIFIER.match(rest)
        if match is None:
            raise ValueError(f'unknown variant {name!r}: cannot parse '
                             f'{rest!r}; expected {grammar}')
        key = match.lastgroup
        token = match.group(key)
        what = token if key == 'flag' else key
        if what in seen:
            raise ValueError(f'variant {name!r} sets {what} twice')
        seen.add(what)
        if key == 'k':
            spec['num_prototypes'] = int(token)
            if spec['num_prototypes'] < 1:
                raise ValueError(f'variant {name!r}: K must be >= 1')
        elif key == 'theta':
            spec['threshold'] = float(token)
            if not -1.0 <= spec['threshold'] <= 1.0:
                raise ValueError(f'variant {name!r}: Θ must lie in [-1, 1] '
                                 '(a cosine similarity)')
        elif key == 'kd':
            spec['kd_weight'] = float(token)
            if spec['kd_weight'] <= 0:
                raise ValueError(f'variant {name!r}: the KD weight must be '
                                 '> 0 (without the modifier it is 0)')
        else:
            spec[token] = True
        rest = rest[match.end():]
    return spec


def variant_cfg_options(spec: dict,
                        iters: int,
                        miner_hook_index: Optional[int] = None,
                        miner_init_iter: Optional[int] = None,
                        offline_teacher: Optional[str] = None,
                        offline_prefix: str = '') -> List[str]:
    """The ``--cfg-options`` that turn the paired config into a variant.

    Args:
        spec (dict): A :func:`parse_variant` result. ``_oracle`` takes the
            student's extra positives from the labels
            (``model.relation_source=oracle_labels``): an analysis upper
            bound that trains with labels, never a competitor. A ReKD
            variant without ``_kd{W}`` sets ``kd=0`` explicitly.
        iters (int): ``train_cfg.max_iters`` of the run.
        miner_hook_index (int, optional): Index of ``RelationMinerHook`` in
            the ReKD config's ``custom_hooks``. Required for
            ``_no_relation`` and ``miner_init_iter``. Defaults to None.
        miner_init_iter (int, optional): Iteration at which the bank is
            clustered (``init_iter`` of the hook). Defaults to None (the
            config's).
        offline_teacher (str, optional): Teacher checkpoint of
            ``_offline``. Defaults to None.
        offline_prefix (str): Prefix before ``backbone.``/``neck.`` in that
            checkpoint (``''`` for MoCo). Defaults to ''.

    Returns:
        list[str]: ``key=value`` strings (mmengine ``DictAction`` syntax).
    """
    options = []
    if spec['algorithm'] != 'rekd':
        return options
    if miner_init_iter is not None or spec['no_relation']:
        if miner_hook_index is None:
            raise ValueError(f"variant {spec['name']!r}: the ReKD config has "
                             'no RelationMinerHook in custom_hooks')
        # Never clustered: no mined positive, the student's loss is InfoNCE.
        init_iter = iters + 1 if spec['no_relation'] else miner_init_iter
        options.append(
            f'custom_hooks.{miner_hook_index}.init_iter={init_iter}')
        if spec['no_relation']:
            # The hook refuses a run that never mines unless told so.
            options.append(
                f'custom_hooks.{miner_hook_index}.allow_no_mining=True')
    if spec['num_prototypes'] is not None:
        options.append(f"model.miner.num_prototypes={spec['num_prototypes']}")
    if spec['threshold'] is not None:
        options.append(f"model.miner.threshold={spec['threshold']}")
    if spec['oracle']:
        options.append('model.relation_source=oracle_labels')
    if spec['kd_weight'] is not None:
        # Through the student's own map into the teacher's space
        # (docs/method.md #21), so that the student's contrastive space is
        # not forced onto the teacher's.
        options += [
            f"model.loss_weights.kd={spec['kd_weight']}",
            'model.kd_projection=True'
        ]
    else:
        # Without ``_kd{W}`` a variant has no response KD whatever its
        # config's default (the small4k configs distil since session 13, at
        # weight 4 since session 24), so that a name means the same run in
        # every committed table.
        options += ['model.loss_weights.kd=0.0', 'model.kd_projection=False']
    if spec['offline']:
        if not offline_teacher:
            raise ValueError(f"variant {spec['name']!r} needs "
                             '--offline-teacher CKPT (or DATASET=CKPT)')
        options += [
            f'model.teacher_pretrained.checkpoint={offline_teacher}',
            f'model.teacher_pretrained.prefix={offline_prefix}'
        ]
    return options


def miner_hook_index(config: str) -> Optional[int]:
    """Index of ``RelationMinerHook`` in a config's ``custom_hooks`` (None
    when it has none)."""
    from mmengine.config import Config
    hooks = Config.fromfile(osp.join(REPO_ROOT, config)).get(
        'custom_hooks', []) or []
    for i, hook in enumerate(hooks):
        if hook.get('type') in ('RelationMinerHook',
                                'mmpretrain.RelationMinerHook'):
            return i
    return None


def offline_teachers(values: Optional[List[str]],
                     datasets: List[str]) -> Dict[str, str]:
    """``--offline-teacher`` as ``{dataset: checkpoint}``."""
    teachers = {}
    for value in values or []:
        name, sep, path = value.partition('=')
        if sep and name in DATASETS:
            teachers[name] = path
        else:
            teachers.update({d: value for d in datasets})
    for name, path in teachers.items():
        if not osp.isfile(path):
            raise FileNotFoundError(
                f'--offline-teacher for {name}: {path} does not exist')
        teachers[name] = osp.abspath(path)
    return teachers
