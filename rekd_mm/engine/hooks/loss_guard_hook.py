# Copyright (c) rekd_mm contributors. All rights reserved.
import math
from typing import Optional, Union

import torch
from mmengine.dist import all_reduce
from mmengine.hooks import Hook
from mmengine.runner import Runner
from mmpretrain.registry import HOOKS

__all__ = ['LossGuardHook']

DATA_BATCH = Optional[Union[dict, tuple, list]]


@HOOKS.register_module()
class LossGuardHook(Hook):
    """Stop training at the first NaN or infinite loss, before anything is
    saved.

    mmengine keeps training on a NaN loss: the weights become NaN, the next
    periodic checkpoint holds them, ``last_checkpoint`` points at it (so
    ``--resume auto`` resumes NaN weights) and ``max_keep_ckpts`` deletes the
    good checkpoints to make room. This hook reads the
    loss terms that ``train_step`` returns (every key with ``loss`` in its
    name, as mmengine's ``parse_losses`` sums them) and raises
    ``FloatingPointError`` naming the term, its value and the iteration,
    e.g. ``loss_relation is nan at iter 17``.

    Its priority, ``VERY_HIGH``, runs it before every other
    ``after_train_iter``, in particular before ``CheckpointHook``
    (``VERY_LOW``): the iteration that produced the NaN is never saved and
    ``last_checkpoint`` keeps naming the last good checkpoint. Under DDP the
    verdict is all-reduced, so every rank stops at the same iteration
    instead of the healthy ones waiting forever in the next collective.

    Use it in a config with ``custom_hooks = [dict(type='LossGuardHook')]``.
    """

    priority = 'VERY_HIGH'

    def after_train_iter(self,
                         runner: Runner,
                         batch_idx: int,
                         data_batch: DATA_BATCH = None,
                         outputs: Optional[dict] = None) -> None:
        """Raise if a loss term of this iteration is not finite."""
        # One host read per iteration: the finiteness of every term is
        # reduced on the terms' device, all-reduced, then read once. Only a
        # failing iteration pays for finding the term to name.
        flag = self._any_bad_flag(outputs)
        all_reduce(flag)  # a no-op without a process group
        if float(flag) == 0:
            return
        bad = self._first_bad_term(outputs)
        # runner.iter is incremented after this hook: +1 matches the
        # ``Iter(train) [N/...]`` numbering of the log.
        it = runner.iter + 1
        if bad is None:
            what = 'a loss term is not finite on another rank'
        else:
            what = f'{bad[0]} is {bad[1]}'
        last = runner.message_hub.get_info('last_ckpt')
        where = (f'The last checkpoint, saved before this iteration, is '
                 f'{last}: resume from it (--resume {last}) after the fix.'
                 if last else 'No checkpoint was saved before it.')
        raise FloatingPointError(
            f'LossGuardHook: {what} at iter {it}; training stopped before '
            f'the weights of this iteration could be saved. {where} '
            'Usual causes: a learning rate too high for the batch size '
            '(lower optim_wrapper.optimizer.lr or add optim_wrapper.clip_grad'
            '), fp16 overflow without a dynamic loss scale, or a broken data '
            'pipeline (constant or empty images).')

    @staticmethod
    def _any_bad_flag(outputs: Optional[dict]) -> torch.Tensor:
        """``[1.]`` if some loss term is not finite, else ``[0.]``, computed
        without a host synchronisation for tensor terms."""
        if not isinstance(outputs, dict):
            return torch.zeros(1)
        finite = []
        for name, value in outputs.items():
            if 'loss' not in name:
                continue
            if isinstance(value, torch.Tensor):
                finite.append(torch.isfinite(value.detach()).all())
            else:
                finite.append(torch.tensor(math.isfinite(float(value))))
        if not finite:
            return torch.zeros(1)
        device = finite[0].device
        ok = torch.stack([f.to(device) for f in finite]).all()
        return (~ok).float().reshape(1)

    @staticmethod
    def _first_bad_term(outputs: Optional[dict]) -> Optional[tuple]:
        """``(name, value)`` of the first non-finite loss term, or None.

        The total ``loss`` comes last so that the message names the term
        that caused it.
        """
        if not isinstance(outputs, dict):
            return None
        names = [k for k in outputs if 'loss' in k and k != 'loss']
        if 'loss' in outputs:
            names.append('loss')
        for name in names:
            value = outputs[name]
            if isinstance(value, torch.Tensor):
                finite = bool(torch.isfinite(value.detach()).all())
                value = value.detach().float().sum().item()
            else:
                finite = math.isfinite(float(value))
            if not finite:
                return name, value
        return None
