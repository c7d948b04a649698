# Copyright (c) OpenMMLab. All rights reserved.
# Derived from mmengine 0.10.7's BaseAveragedModel.update_parameters
# (mmengine/model/averaged_model.py, Apache-2.0);
# modified by rekd_mm contributors.
"""A momentum encoder whose update never reads its step counter on the host."""
import torch
import torch.nn as nn
from mmengine.model import ExponentialMovingAverage

__all__ = ['SyncFreeEMA']


class SyncFreeEMA(ExponentialMovingAverage):
    """mmengine's ``ExponentialMovingAverage`` without host synchronisation.

    mmengine's ``update_parameters`` branches on ``self.steps == 0`` and on
    ``self.steps % self.interval == 0``: two reads of a device tensor, i.e.
    two host synchronisations per update on CUDA (four per ReKD step, with
    the student's and the teacher's momentum encoders). Here the branch is
    folded into the weight of the new value, computed on the device::

        w = 1                if steps == 0
            momentum         if steps % interval == 0
            0                otherwise
        p_avg <- lerp(p_avg, p_src, w)

    which is the same update: ``lerp`` with weight 1 returns the source
    (mmengine copies it at step 0) and with weight 0 the average. Buffers are
    copied from the source as in mmengine. The state dict (``module.*``,
    ``steps``) is mmengine's, so checkpoints load either way.
    """

    @torch.no_grad()
    def update_parameters(self, model: nn.Module) -> None:
        """Average ``model`` into this copy (no host read)."""
        src = (
            model.state_dict()
            if self.update_buffers else dict(model.named_parameters()))
        first = self.steps == 0
        due = self.steps % self.interval == 0
        weight = torch.where(first, 1.0, torch.where(due, self.momentum, 0.0))
        weights = {}
        for name, p_avg in self.avg_parameters.items():
            p_src = src[name].data.to(p_avg.device)
            if p_avg.dtype.is_floating_point:
                if p_avg.dtype not in weights:
                    weights[p_avg.dtype] = weight.to(p_avg.dtype)
                p_avg.data.lerp_(p_src, weights[p_avg.dtype])
            else:  # integer buffers (update_buffers=True): copied at step 0
                p_avg.data.copy_(torch.where(first, p_src, p_avg.data))
        if not self.update_buffers:
            for b_avg, b_src in zip(self.module.buffers(), model.buffers()):
                b_avg.data.copy_(b_src.data.to(b_avg.device))
        self.steps += 1
