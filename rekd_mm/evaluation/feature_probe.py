# Copyright (c) rekd_mm contributors. All rights reserved.
"""A linear probe on frozen, pre-extracted features, trained to convergence.

mmpretrain's linear-probe configs train a linear head on augmented images
for tens of epochs, which on a CPU costs hours per checkpoint for a small
benchmark. Features without augmentation, extracted once (the kNN's), make
the probe a convex problem that full-batch L-BFGS solves to convergence:
multinomial logistic regression on standardised features with an L2 penalty
chosen on a held-out tenth of the training split.

Cost: one L-BFGS step reads the whole ``(N, C)`` feature matrix twice; on
50,000 x 1,280 features one CPU core needs ~0.1 s per step and weakly
penalised fits run to the iteration cap, so four fits on the full split took
over 25 minutes on a shared core. The penalty is therefore chosen on a
subset (``max_select_samples``) and the final fit on the whole split starts
from the chosen subset fit, which is close to its optimum.
"""
import math
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

__all__ = ['fit_logistic_regression', 'feature_linear_probe']


def fit_logistic_regression(
        feats: torch.Tensor,
        labels: torch.Tensor,
        num_classes: int,
        weight_decay: float,
        max_iter: int = 1000,
        tolerance: float = 1e-5,
        init: Optional[Tuple[torch.Tensor, torch.Tensor]] = None) -> Dict:
    """Multinomial logistic regression by full-batch L-BFGS.

    Args:
        feats (Tensor): ``(N, C)`` float features (already standardised).
        labels (Tensor): ``(N,)`` class indices.
        num_classes (int): Number of classes.
        weight_decay (float): L2 penalty on the weights (not the bias),
            ``weight_decay / 2 * ||W||^2`` added to the mean cross-entropy.
        max_iter (int): L-BFGS iterations at most. Defaults to 1000.
        tolerance (float): Stop when the gradient's largest entry falls
            below this; the fit counts as converged below ten times this.
            Defaults to 1e-5.
        init (tuple[Tensor, Tensor], optional): Starting ``(weight, bias)``,
            e.g. a fit on a subset of the same data. Defaults to None
            (zeros). The problem is strictly convex, so the start changes
            only the number of iterations, not the optimum.

    Returns:
        dict: ``weight`` ``(K, C)``, ``bias`` ``(K,)``, ``loss`` (final
        objective), ``iterations`` and ``converged`` (bool).
    """
    feats = feats.float()
    if init is None:
        init = (torch.zeros(num_classes,
                            feats.shape[1]), torch.zeros(num_classes))
    weight = init[0].detach().float().clone().requires_grad_(True)
    bias = init[1].detach().float().clone().requires_grad_(True)
    optimizer = torch.optim.LBFGS([weight, bias],
                                  lr=1,
                                  max_iter=max_iter,
                                  tolerance_grad=tolerance,
                                  tolerance_change=0,
                                  history_size=20,
                                  line_search_fn='strong_wolfe')

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(feats @ weight.t() + bias, labels) + \
            0.5 * weight_decay * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    loss = closure()
    grad_max = max(weight.grad.abs().max(), bias.grad.abs().max())
    state = optimizer.state[optimizer._params[0]]
    return dict(
        weight=weight.detach(),
        bias=bias.detach(),
        loss=float(loss.detach()),
        iterations=int(state.get('n_iter', 0)),
        converged=bool(grad_max <= tolerance * 10))


def _accuracy(weight, bias, feats, labels) -> float:
    pred = (feats @ weight.t() + bias).argmax(1)
    return float((pred == labels).float().mean() * 100)


def feature_linear_probe(train_feats: torch.Tensor,
                         train_labels: torch.Tensor,
                         val_feats: torch.Tensor,
                         val_labels: torch.Tensor,
                         num_classes: int,
                         weight_decays: Sequence[float] = (1e-4, 1e-3, 1e-2),
                         seed: int = 0,
                         max_iter: int = 1000,
                         max_select_samples: Optional[int] = 10000) -> Dict:
    """Top-1 of a linear probe on frozen features.

    The features are standardised with the training split's mean and std.
    The L2 penalty is chosen from ``weight_decays`` by accuracy on a random
    tenth of the training split, held out from fits on (at most
    ``max_select_samples`` of) the rest; the probe is then refitted on the
    whole training split, starting from the chosen fit, and scored on
    ``val``.

    Args:
        train_feats (Tensor): ``(N, C)`` training features.
        train_labels (Tensor): ``(N,)`` their labels.
        val_feats (Tensor): ``(M, C)`` evaluation features.
        val_labels (Tensor): ``(M,)`` their labels.
        num_classes (int): Number of classes.
        weight_decays (Sequence[float]): Candidate penalties (on
            standardised features). Defaults to (1e-4, 1e-3, 1e-2).
        seed (int): Seed of the held-out split. Defaults to 0.
        max_iter (int): L-BFGS iterations per fit. Defaults to 1000.
        max_select_samples (int, optional): Training samples of each
            penalty-selection fit. Defaults to 10000 (None: all but the
            held-out tenth).

    Returns:
        dict: ``top1`` (percent, on ``val``), ``train_top1``,
        ``weight_decay`` (chosen), ``holdout_top1`` per candidate,
        ``select_samples`` (size of the selection fits), ``iterations`` and
        ``converged`` of the final fit.
    """
    if len(weight_decays) == 0:
        raise ValueError('weight_decays must name at least one penalty')
    mean = train_feats.float().mean(0)
    std = train_feats.float().std(0)
    scale = float(std.max()) if std.numel() else 0.
    if not math.isfinite(scale) or scale == 0:
        raise ValueError('the training features are constant or not finite '
                         f'(largest per-dimension std {scale}): there is '
                         'nothing to probe')
    # The floor is relative: a backbone's features can be tiny as a whole
    # (an untrained MobileNetV2 in eval mode ends at ~1e-9), and an absolute
    # floor (it was 1e-6) scaled them all to ~0, so that L-BFGS stopped at
    # once, near chance, and reported convergence. Exactly constant
    # dimensions stay 0 after centring.
    std = std.clamp(min=scale * 1e-6)
    train_x = (train_feats.float() - mean) / std
    val_x = (val_feats.float() - mean) / std
    train_y, val_y = train_labels.long(), val_labels.long()

    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(train_x.shape[0], generator=gen)
    num_hold = max(1, train_x.shape[0] // 10)
    hold, fit = perm[:num_hold], perm[num_hold:]
    if max_select_samples is not None:
        if max_select_samples < 1:
            raise ValueError('max_select_samples must be >= 1 or None, got '
                             f'{max_select_samples}')
        fit = fit[:max_select_samples]
    holdout, starts = {}, {}
    for wd in weight_decays:
        model = fit_logistic_regression(train_x[fit], train_y[fit],
                                        num_classes, wd, max_iter)
        holdout[wd] = _accuracy(model['weight'], model['bias'], train_x[hold],
                                train_y[hold])
        starts[wd] = (model['weight'], model['bias'])
    best = max(weight_decays, key=lambda wd: (holdout[wd], -wd))
    model = fit_logistic_regression(
        train_x, train_y, num_classes, best, max_iter, init=starts[best])
    return dict(
        top1=_accuracy(model['weight'], model['bias'], val_x, val_y),
        train_top1=_accuracy(model['weight'], model['bias'], train_x, train_y),
        weight_decay=best,
        holdout_top1={str(k): v
                      for k, v in holdout.items()},
        select_samples=int(fit.numel()),
        iterations=model['iterations'],
        converged=model['converged'])
