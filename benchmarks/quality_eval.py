# Copyright (c) rekd_mm contributors. All rights reserved.
"""Scoring for the quality benchmark: one feature extraction per backbone,
then weighted kNN and a linear probe trained to convergence on the same
features; plus the reference rows (untrained student, raw pixels).

``benchmarks/quality.py`` imports this module only after it has set
``OMP_NUM_THREADS`` (torch reads it at import).
"""
import time
from typing import Dict

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.registry import init_default_scope
from mmpretrain.registry import MODELS

from rekd_mm.evaluation import (build_data_preprocessor, build_knn_dataloader,
                                extract_features, weighted_knn)
from rekd_mm.evaluation.feature_probe import feature_linear_probe
from rekd_mm.evaluation.knn import count_classes
from rekd_mm.evaluation.knn_eval import backbone_cfg_for_prefix
from rekd_mm.utils.checkpoint import load_prefixed_weights

__all__ = [
    'score_features', 'build_backbone', 'evaluate_checkpoint',
    'evaluate_untrained', 'evaluate_pixels', 'PixelFeatures'
]


def _loaders(cfg, args):
    for name in ('knn_train_dataloader', 'knn_val_dataloader'):
        if cfg.get(name, None) is None:
            raise KeyError(f'the config has no {name} (labelled, '
                           'un-augmented splits for kNN and the probe)')
    return (build_knn_dataloader(cfg.knn_train_dataloader, args.knn_max_train,
                                 args.seed),
            build_knn_dataloader(cfg.knn_val_dataloader, args.knn_max_val,
                                 args.seed))


def score_features(train_feats,
                   train_labels,
                   val_feats,
                   val_labels,
                   num_classes: int,
                   probe: bool = True,
                   seed: int = 0) -> Dict:
    """Weighted kNN (k = 200 and 20, T = 0.07) of L2-normalised features,
    and the linear probe of :func:`feature_linear_probe`.

    Returns:
        dict: ``k{k}_top1``/``k{k}_top5``, ``num_train``, ``num_val``,
        ``feat_dim`` and, with ``probe``, ``probe`` (its result dict).
    """
    train_n = F.normalize(train_feats.float(), dim=1)
    val_n = F.normalize(val_feats.float(), dim=1)
    result = {}
    for k in (200, 20):
        scores = weighted_knn(train_n, train_labels, val_n, val_labels, k,
                              0.07, num_classes)
        result.update({f'k{k}_{name}': v for name, v in scores.items()})
    result.update(
        num_train=int(train_feats.shape[0]),
        num_val=int(val_feats.shape[0]),
        feat_dim=int(train_feats.shape[1]))
    if probe:
        start = time.perf_counter()
        result['probe'] = feature_linear_probe(
            train_feats,
            train_labels,
            val_feats,
            val_labels,
            num_classes,
            seed=seed)
        result['probe']['wall_s'] = time.perf_counter() - start
    return result


def _evaluate_backbone(cfg, backbone, args, center: bool = False) -> Dict:
    """Features of both splits (pooled last stage), then scores.

    ``center``: subtract the training split's mean feature before the L2
    normalisation (used for raw pixels, whose mean image dominates cosine
    similarities).
    """
    start = time.perf_counter()
    train_loader, val_loader = _loaders(cfg, args)
    preprocessor = build_data_preprocessor(cfg)
    train_f, train_y = extract_features(
        backbone, train_loader, preprocessor, normalize=False)
    val_f, val_y = extract_features(
        backbone, val_loader, preprocessor, normalize=False)
    if center:
        mean = train_f.mean(0)
        train_f, val_f = train_f - mean, val_f - mean
    result = score_features(
        train_f,
        train_y,
        val_f,
        val_y,
        count_classes(train_loader, train_y, val_y),
        probe=getattr(args, 'feature_probe', True),
        seed=args.seed)
    result['wall_s'] = time.perf_counter() - start
    return result


def build_backbone(cfg, prefix: str) -> nn.Module:
    """The backbone stored under ``prefix`` by a run of ``cfg``, built in the
    config's default scope (as the Runner builds it): mmcv's
    ``build_norm_layer`` looks norm layers up in the current scope, and
    ``SplitBN`` is registered in mmpretrain's registry only."""
    init_default_scope(cfg.get('default_scope', 'mmpretrain'))
    return MODELS.build(backbone_cfg_for_prefix(cfg, prefix))


def evaluate_checkpoint(cfg, checkpoint: str, prefix: str, args) -> Dict:
    """Scores of the backbone stored under ``prefix`` in ``checkpoint``
    (``'backbone.'``: the student or a classifier; ``'teacher.backbone.'``:
    ReKD's teacher), loaded with ``weights_only=True``."""
    backbone = build_backbone(cfg, prefix)
    load_prefixed_weights(
        backbone, checkpoint, prefix, strict=True, what=prefix.rstrip('.'))
    result = _evaluate_backbone(cfg, backbone, args)
    result.update(checkpoint=checkpoint, prefix=prefix)
    return result


def evaluate_untrained(cfg, seed: int, args) -> Dict:
    """Scores of a freshly initialised student: its config's backbone, built
    and initialised right after ``torch.manual_seed(seed)``.

    The same architecture and initialisation scheme as the trained run, not
    its exact initial weights: the Runner draws from the RNG between seeding
    and ``init_weights()`` (``tools/demo.py`` saves the exact ones)."""
    torch.manual_seed(seed)
    backbone = build_backbone(cfg, 'backbone.')
    backbone.init_weights()
    return _evaluate_backbone(cfg, backbone, args)


class PixelFeatures(nn.Module):
    """A "backbone" whose features are the (normalised) pixels, flattened:
    the raw-pixel reference row."""

    def forward(self, inputs: torch.Tensor) -> tuple:
        return (inputs.flatten(1), )


def evaluate_pixels(cfg, args) -> Dict:
    """Scores of raw pixels: the kNN splits through the model's
    normalisation, flattened, centred on the training mean (cosine kNN on
    uncentred pixels mostly measures brightness)."""
    return _evaluate_backbone(cfg, PixelFeatures(), args, center=True)
