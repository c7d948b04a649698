# Copyright (c) rekd_mm contributors. All rights reserved.
import io
import os
import os.path as osp
from collections import OrderedDict
from typing import Dict, Mapping, Optional

import torch
from mmengine.dist import is_main_process
from mmengine.hooks import Hook
from mmengine.logging import MMLogger
from mmengine.runner import Runner
from mmpretrain.registry import HOOKS
from mmpretrain.utils import get_ori_model

from .atomic_checkpoint_hook import atomic_write

__all__ = ['ExportWeightsHook', 'export_backbone_weights', 'DEFAULT_PARTS']

# Which backbone is exported under which name: the student sits at
# ``backbone.*`` (mmpretrain's MoCo layout), the teacher at
# ``teacher.backbone.*``. Both are written as ``backbone.*``.
DEFAULT_PARTS = OrderedDict(student='backbone.', teacher='teacher.backbone.')
EXPORT_PREFIX = 'backbone.'


def _plain(value: torch.Tensor) -> torch.Tensor:
    """A compact CPU copy in the default memory format (a view would save
    its whole storage; ``channels_last`` is a training-time choice)."""
    return value.detach().to(
        device='cpu', memory_format=torch.contiguous_format, copy=True)


def export_backbone_weights(
    state_dict: Mapping[str, torch.Tensor],
    out_dir: str,
    parts: Optional[Mapping[str, str]] = None,
    filename_tmpl: str = '{}_backbone.pth',
    meta: Optional[dict] = None,
    required: tuple = ('student', )
) -> Dict[str, str]:
    """Write each backbone of a ReKD state dict as a plain weights file.

    Every file is ``{'meta': {...}, 'state_dict': {'backbone.<name>':
    tensor}}`` and holds nothing but tensors, strings and numbers, so
    ``torch.load(path, weights_only=True)`` reads it without importing
    rekd_mm, and mmpretrain/mmdet configs load it with
    ``init_cfg=dict(type='Pretrained', checkpoint=path, prefix='backbone.')``.
    Files are written atomically (temporary file, fsync, rename).

    Args:
        state_dict (Mapping[str, torch.Tensor]): The model's state dict
            (no DDP ``module.`` prefix).
        out_dir (str): The output directory (created if missing).
        parts (Mapping[str, str], optional): Name of each export and the
            prefix of its keys in ``state_dict``. Defaults to None
            (:data:`DEFAULT_PARTS`: student and teacher backbones).
        filename_tmpl (str): File name, formatted with the part's name.
            Defaults to ``'{}_backbone.pth'``.
        meta (dict, optional): Extra metadata (strings and numbers only).
            Defaults to None.
        required (tuple): Parts whose prefix must match; the others are
            skipped when absent (a MoCo v2 model has no teacher).
            Defaults to ``('student', )``.

    Returns:
        Dict[str, str]: The path written for each exported part.
    """
    parts = DEFAULT_PARTS if parts is None else parts
    os.makedirs(out_dir, exist_ok=True)
    written = OrderedDict()
    for who, prefix in parts.items():
        if prefix and not prefix.endswith('.'):
            prefix += '.'
        picked = OrderedDict((EXPORT_PREFIX + key[len(prefix):], _plain(value))
                             for key, value in state_dict.items()
                             if key.startswith(prefix))
        if not picked:
            if who in required:
                heads = sorted({key.split('.')[0] + '.' for key in state_dict})
                raise KeyError(f'export_backbone_weights: no key starts with '
                               f'{prefix!r} ({who}); the keys start with '
                               f'{heads}')
            continue
        file_meta = dict(meta or {})
        file_meta.update(part=who, source_prefix=prefix, prefix=EXPORT_PREFIX)
        buffer = io.BytesIO()
        torch.save(dict(meta=file_meta, state_dict=picked), buffer)
        path = osp.join(out_dir, filename_tmpl.format(who))
        atomic_write(path, buffer.getvalue())
        written[who] = path
    return written


@HOOKS.register_module()
class ExportWeightsHook(Hook):
    """Write the student's and the teacher's backbones as plain weights
    files at the end of training.

    A training checkpoint holds mmengine objects (``HistoryBuffer``, numpy
    scalars) besides tensors; torch>=2.6 loads with ``weights_only=True`` by
    default and mmengine 0.10.7 does not override it, so the official
    mmpretrain/mmdet tools cannot read such a checkpoint unless rekd_mm is
    imported first. This hook writes, on rank 0 and atomically,
    ``<out_dir>/student_backbone.pth`` and ``<out_dir>/teacher_backbone.pth``
    (see :func:`export_backbone_weights`): ``{'meta': ..., 'state_dict':
    {'backbone.*': tensor}}``, which any OpenMMLab config loads with
    ``init_cfg=dict(type='Pretrained', checkpoint=..., prefix='backbone.')``.
    ``tools/model_converters/export_weights.py`` does the same for any saved
    checkpoint.

    Args:
        out_dir (str, optional): Output directory. Defaults to None (the
            runner's ``work_dir``).
        parts (dict, optional): Name of each export and the prefix of its
            keys in the model's state dict. Defaults to None
            (``student='backbone.'``, ``teacher='teacher.backbone.'``; the
            teacher is skipped for a model without one).
        filename_tmpl (str): File name, formatted with the part's name.
            Defaults to ``'{}_backbone.pth'``.
    """

    priority = 'LOW'

    def __init__(self,
                 out_dir: Optional[str] = None,
                 parts: Optional[Dict[str, str]] = None,
                 filename_tmpl: str = '{}_backbone.pth') -> None:
        if '{}' not in filename_tmpl:
            raise ValueError('ExportWeightsHook: filename_tmpl needs a {} '
                             f'for the part name, got {filename_tmpl!r}')
        self.out_dir = out_dir
        self.parts = OrderedDict(DEFAULT_PARTS if parts is None else parts)
        self.filename_tmpl = filename_tmpl

    def after_train(self, runner: Runner) -> None:
        """Export the final weights (rank 0 only)."""
        if not is_main_process():
            return
        model = get_ori_model(runner.model)
        written = export_backbone_weights(
            model.state_dict(),
            self.out_dir or runner.work_dir,
            self.parts,
            self.filename_tmpl,
            meta=dict(iter=runner.iter, epoch=runner.epoch))
        for who, path in written.items():
            MMLogger.get_current_instance().info(
                f'ExportWeightsHook: wrote the {who} backbone to {path} '
                "(load with prefix='backbone.')")
