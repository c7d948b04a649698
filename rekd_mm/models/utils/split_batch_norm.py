# Copyright (c) rekd_mm contributors. All rights reserved.
"""Batch normalisation over groups of the batch: MoCo's shuffle-BN on one
process.

MoCo normalises each GPU's part of the batch separately and shuffles the
keys across GPUs, so that a query and its positive key are never normalised
with the same batch-mates (He et al., 2020, Sec. 3.3). Otherwise the
contrastive task can be solved from the batch statistics: the positive key
is the one computed beside the query's own batch-mates, every queued key was
computed beside others. On one process (a CPU, or one GPU) the shuffle is a
permutation of a batch that BN normalises as a whole, so nothing is broken;
``SplitBN`` restores what the GPUs did by normalising ``num_splits`` equal
slices of the batch separately (the "split BN" of MoCo's CIFAR-10 demo).

Measured on the small regime (docs/quality.md, "Batch-statistics
shortcut"): with whole-batch BN, the Fashion-MNIST MoCo v2 key of an image
computed beside other images than its query's loses a quarter of its cosine
to the query.

mmcv and mmengine have no such layer (mmengine's ``_BatchNormXd`` only lifts
the input-dimension check), hence this one.
"""
import torch
import torch.nn.functional as F
from mmpretrain.registry import MODELS
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ['SplitBatchNorm', 'has_split_batch_norm']


@MODELS.register_module('SplitBN')
class SplitBatchNorm(_BatchNorm):
    """Batch normalisation with statistics per slice of the batch in
    training.

    In training the batch is cut into ``num_splits`` equal, consecutive
    slices, each normalised with its own mean and (biased) variance, all
    with the same affine weight and bias. The running statistics move by
    ``momentum`` towards the mean over slices of the slice means and of the
    slice variances (unbiased), what averaging the running statistics of
    ``num_splits`` GPUs gives. In evaluation, and with ``num_splits=1``, it
    is ``torch.nn.BatchNorm*d``. Any input of shape ``(N, C, *)`` is
    accepted (backbone maps and neck vectors), and the parameters and
    buffers are BatchNorm's: a checkpoint loads into a model built with
    ``BN`` and the other way round.

    Args:
        num_features (int): Number of channels ``C``.
        num_splits (int): Slices of the batch normalised separately; the
            training batch size must be a multiple of it. Defaults to 1.
        eps (float): Added to the variance. Defaults to 1e-5.
        momentum (float, optional): Weight of the new statistics in the
            running ones; None for a cumulative average. Defaults to 0.1.
        affine (bool): Learn a per-channel weight and bias.
            Defaults to True.
        track_running_stats (bool): Keep running statistics for evaluation.
            Defaults to True.
    """

    def __init__(self,
                 num_features: int,
                 num_splits: int = 1,
                 eps: float = 1e-5,
                 momentum: float = 0.1,
                 affine: bool = True,
                 track_running_stats: bool = True,
                 device=None,
                 dtype=None) -> None:
        super().__init__(num_features, eps, momentum, affine,
                         track_running_stats, device, dtype)
        if not isinstance(num_splits, int) or num_splits < 1:
            raise ValueError(
                f'SplitBN: num_splits must be a positive integer, got '
                f'{num_splits!r} (norm_cfg=dict(type="SplitBN", '
                f'num_splits=...)).')
        self.num_splits = num_splits

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f'SplitBN expects an (N, C, *) input, got shape '
                             f'{tuple(input.shape)}.')

    def extra_repr(self) -> str:
        return f'{super().extra_repr()}, num_splits={self.num_splits}'

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not self.training or self.num_splits == 1:
            return super().forward(input)
        self._check_input_dim(input)
        batch_size = input.shape[0]
        if batch_size % self.num_splits:
            raise ValueError(
                f'SplitBN: the training batch ({batch_size} samples on this '
                f'process) is not a multiple of num_splits='
                f'{self.num_splits}: change the batch size or num_splits '
                f'(drop_last=True keeps every batch full).')
        slices = input.chunk(self.num_splits)
        # Each slice is normalised with its own statistics. Running buffers
        # with momentum 1 receive each slice's mean and unbiased variance
        # from the same kernel (no second pass over the input); the running
        # statistics then move once, towards their average over slices.
        stats = dict(device=input.device, dtype=torch.float32)
        means = torch.zeros(self.num_splits, self.num_features, **stats)
        variances = torch.ones(self.num_splits, self.num_features, **stats)
        output = torch.cat([
            F.batch_norm(part, means[i], variances[i], self.weight, self.bias,
                         True, 1.0, self.eps) for i, part in enumerate(slices)
        ])
        if self.track_running_stats:
            self._update_running_stats(means.mean(0), variances.mean(0))
        return output

    @torch.no_grad()
    def _update_running_stats(self, mean: torch.Tensor,
                              var: torch.Tensor) -> None:
        self.num_batches_tracked.add_(1)
        if self.momentum is None:  # cumulative moving average
            factor = 1.0 / self.num_batches_tracked.float()
        else:
            factor = self.momentum
        self.running_mean.lerp_(mean.to(self.running_mean.dtype), factor)
        self.running_var.lerp_(var.to(self.running_var.dtype), factor)


def has_split_batch_norm(module: torch.nn.Module) -> bool:
    """Whether any layer of ``module`` is a :class:`SplitBatchNorm` with
    more than one slice, i.e. whether its keys must be shuffled even on one
    process."""
    return any(
        isinstance(m, SplitBatchNorm) and m.num_splits > 1
        for m in module.modules())
