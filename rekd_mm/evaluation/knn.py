# Copyright (c) rekd_mm contributors. All rights reserved.
"""Weighted k-nearest-neighbour evaluation of frozen features.

The protocol of InstDisc (`Wu et al., CVPR 2018
<https://arxiv.org/abs/1805.01978>`_), used by most self-supervised papers
as a cheap proxy for linear evaluation: features are the global average of
the last backbone stage, L2-normalised; every test image votes with its ``k``
most cosine-similar training images, each vote weighted by
``exp(sim / T)``; the class with the largest vote sum wins.

mmpretrain 1.2 ships no kNN evaluator (mmselfsup's ``knn_classifier`` was
not carried over), hence this module.
"""
import copy
import random
from typing import Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.dist import all_gather, get_world_size, is_main_process
from mmengine.runner import Runner
from mmengine.utils import ProgressBar
from mmpretrain.registry import DATASETS, MODELS
from torch.utils.data import DataLoader

__all__ = [
    'extract_features', 'weighted_knn', 'evaluate_knn', 'build_knn_dataloader',
    'build_data_preprocessor', 'pool_features', 'count_classes'
]


def pool_features(outputs: Union[torch.Tensor, Sequence[torch.Tensor]],
                  normalize: bool = True) -> torch.Tensor:
    """Global-average-pool the last stage of a backbone's outputs.

    Args:
        outputs (Tensor | Sequence[Tensor]): A backbone's output: a tuple of
            stage outputs (mmpretrain backbones) or a single tensor, each
            ``(N, C, H, W)`` or already pooled ``(N, C)``.
        normalize (bool): Whether to L2-normalise the result.
            Defaults to True.

    Returns:
        Tensor: ``(N, C)`` float features.
    """
    feat = outputs if isinstance(outputs, torch.Tensor) else outputs[-1]
    if feat.dim() == 4:
        feat = F.adaptive_avg_pool2d(feat, 1)
    feat = feat.flatten(1).float()
    return F.normalize(feat, dim=1) if normalize else feat


def build_data_preprocessor(cfg) -> nn.Module:
    """Build the normalisation that the model was trained with.

    Args:
        cfg (Config | dict): A full config: ``model.data_preprocessor`` is
            used, else the top-level ``data_preprocessor`` (which mmengine's
            Runner merges into the model), else ``SelfSupDataPreprocessor``
            without normalisation (what ``BaseSelfSupervisor`` defaults to).

    Returns:
        nn.Module: The data preprocessor.
    """
    model_cfg = cfg.get('model', None) or {}
    pre_cfg = model_cfg.get('data_preprocessor', None) or cfg.get(
        'data_preprocessor', None) or dict(type='SelfSupDataPreprocessor')
    return MODELS.build(copy.deepcopy(pre_cfg))


def _module_device(module: nn.Module) -> torch.device:
    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return torch.device('cpu')


def _gather_rows(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's ``(n_r, ...)`` tensor, ``n_r`` may differ.

    ``mmengine.dist.all_gather`` needs equal shapes, so every rank pads to the
    largest ``n_r`` first. A no-op copy when not distributed.
    """
    if get_world_size() == 1:
        return tensor
    counts = torch.cat(
        all_gather(torch.tensor([tensor.shape[0]], device=tensor.device)))
    max_count = int(counts.max())
    padded = tensor.new_zeros((max_count, ) + tuple(tensor.shape[1:]))
    padded[:tensor.shape[0]] = tensor
    gathered = all_gather(padded)
    return torch.cat(
        [part[:int(n)] for part, n in zip(gathered, counts.tolist())])


@torch.no_grad()
def extract_features(
        model_or_backbone: nn.Module,
        dataloader: DataLoader,
        data_preprocessor: Optional[Union[nn.Module, dict]] = None,
        normalize: bool = True,
        show_progress: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
    """Pooled, L2-normalised backbone features of a whole data set.

    Every rank runs its shard of ``dataloader`` (a distributed sampler); the
    shards are gathered so that every rank returns the features of the whole
    data set in data set order. Samples are placed by their ``sample_idx``
    (packed by ``PackInputs``), which also drops the duplicates a padding
    sampler adds. The module is put in eval mode and restored afterwards.

    Args:
        model_or_backbone (nn.Module): A model with ``backbone`` (and
            ``data_preprocessor``) attributes, e.g. ReKD or an
            ImageClassifier, or a bare backbone (e.g.
            ``model.teacher.backbone``).
        dataloader (DataLoader): Loader of single-view samples with
            ``gt_label``.
        data_preprocessor (nn.Module | dict, optional): The normalisation.
            Defaults to None: the model's ``data_preprocessor``, required
            for a bare backbone.
        normalize (bool): Whether to L2-normalise the features.
            Defaults to True.
        show_progress (bool): Whether the main process shows a progress
            bar. Defaults to False.

    Returns:
        Tuple[Tensor, Tensor]: Features ``(N, C)`` and labels ``(N, )``
        (long, -1 where a sample has no label), on the module's device.
    """
    backbone = getattr(model_or_backbone, 'backbone', model_or_backbone)
    if data_preprocessor is None:
        data_preprocessor = getattr(model_or_backbone, 'data_preprocessor',
                                    None)
        if data_preprocessor is None:
            raise ValueError(
                'extract_features: a bare backbone needs a data_preprocessor '
                '(the normalisation used in training), e.g. '
                'build_data_preprocessor(cfg)')
    if isinstance(data_preprocessor, dict):
        data_preprocessor = MODELS.build(data_preprocessor)
    device = _module_device(backbone)
    data_preprocessor = data_preprocessor.to(device)

    was_training = backbone.training
    backbone.eval()
    feats, labels, indices = [], [], []
    seen = 0
    bar = ProgressBar(len(dataloader)) if (show_progress
                                           and is_main_process()) else None
    for data in dataloader:
        data = data_preprocessor(data, False)
        inputs = data['inputs']
        if isinstance(inputs, (list, tuple)):  # SelfSupDataPreprocessor
            inputs = inputs[0]
        feats.append(pool_features(backbone(inputs), normalize))
        samples = data.get('data_samples') or []
        batch = inputs.shape[0]
        labels.append(
            torch.tensor(
                [
                    int(s.gt_label[0]) if 'gt_label' in s else -1
                    for s in samples
                ] if samples else [-1] * batch,
                dtype=torch.long))
        if samples and all('sample_idx' in s for s in samples):
            indices.append(
                torch.tensor([s.sample_idx for s in samples],
                             dtype=torch.long))
        elif get_world_size() > 1:
            raise KeyError(
                'extract_features: distributed extraction needs '
                "'sample_idx' in every data sample to undo the sampler's "
                "sharding; keep 'sample_idx' in PackInputs' meta_keys.")
        else:
            indices.append(torch.arange(seen, seen + batch))
        seen += batch
        if bar is not None:
            bar.update()
    if bar is not None:
        print()
    backbone.train(was_training)

    if not feats:
        raise ValueError('extract_features: the dataloader yielded nothing')
    feats = _gather_rows(torch.cat(feats))
    labels = _gather_rows(torch.cat(labels).to(device))
    indices = _gather_rows(torch.cat(indices).to(device))
    # Scatter into data set order; padded duplicates overwrite themselves.
    dataset = getattr(dataloader, 'dataset', None)
    num = len(dataset) if hasattr(dataset,
                                  '__len__') else int(indices.max()) + 1
    out_feats = feats.new_zeros((num, feats.shape[1]))
    out_labels = labels.new_full((num, ), -1)
    filled = torch.zeros(num, dtype=torch.bool, device=device)
    out_feats[indices] = feats
    out_labels[indices] = labels
    filled[indices] = True
    if not bool(filled.all()):
        raise RuntimeError(
            f'extract_features: {int((~filled).sum())} of {num} samples were '
            'never seen; use a sampler that covers the data set (e.g. '
            'DefaultSampler with shuffle=False).')
    return out_feats, out_labels


@torch.no_grad()
def weighted_knn(train_feats: torch.Tensor,
                 train_labels: torch.Tensor,
                 test_feats: torch.Tensor,
                 test_labels: torch.Tensor,
                 k: int = 200,
                 T: float = 0.07,
                 num_classes: Optional[int] = None,
                 chunk_size: int = 256) -> Dict[str, float]:
    """Weighted kNN classification accuracy (InstDisc).

    For each test feature ``x`` with neighbours ``N_k(x)`` (the ``k``
    training features of highest cosine similarity ``s_i``), the score of
    class ``c`` is ``sum_{i in N_k(x), y_i = c} exp(s_i / T)``. The test set
    is processed in chunks of ``chunk_size``, so memory stays at
    ``chunk_size x N_train`` similarities.

    Args:
        train_feats (Tensor): ``(N, C)`` L2-normalised memory bank.
        train_labels (Tensor): ``(N, )`` labels in ``[0, num_classes)``.
        test_feats (Tensor): ``(M, C)`` L2-normalised queries.
        test_labels (Tensor): ``(M, )`` labels.
        k (int): Neighbours per query; clipped to ``N``. Defaults to 200.
        T (float): Temperature τ of the vote weights. Defaults to 0.07.
        num_classes (int, optional): Number of classes. Defaults to None
            (``max(label) + 1`` over both sets).
        chunk_size (int): Queries per chunk. Defaults to 256.

    Returns:
        Dict[str, float]: ``top1`` and, when there are at least 5 classes,
        ``top5``, in percent.
    """
    if k < 1:
        raise ValueError(f'weighted_knn: k must be >= 1, got {k}')
    if T <= 0:
        raise ValueError(f'weighted_knn: temperature must be > 0, got {T}')
    if train_feats.shape[0] != train_labels.shape[0] or \
            test_feats.shape[0] != test_labels.shape[0]:
        raise ValueError('weighted_knn: features and labels differ in length')
    if train_feats.shape[0] == 0 or test_feats.shape[0] == 0:
        raise ValueError('weighted_knn: empty train or test set')
    if bool((train_labels < 0).any()) or bool((test_labels < 0).any()):
        raise ValueError('weighted_knn: every sample needs a label (found '
                         '-1): the kNN data sets must be labelled')
    if num_classes is None:
        num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    k = min(k, train_feats.shape[0])
    train_feats = train_feats.float()
    test_feats = test_feats.to(train_feats)
    train_labels = train_labels.to(train_feats.device)
    test_labels = test_labels.to(train_feats.device)
    maxk = min(5, num_classes)

    correct = torch.zeros(maxk, dtype=torch.long)
    for start in range(0, test_feats.shape[0], chunk_size):
        query = test_feats[start:start + chunk_size]
        target = test_labels[start:start + chunk_size]
        sim, idx = (query @ train_feats.t()).topk(k, dim=1)
        weight = (sim / T).exp()
        votes = weight.new_zeros(query.shape[0], num_classes)
        votes.scatter_add_(1, train_labels[idx], weight)
        pred = votes.topk(maxk, dim=1).indices
        hits = pred == target[:, None]
        correct += hits.cumsum(1).clamp(max=1).sum(0).cpu()
    total = test_feats.shape[0]
    result = dict(top1=100.0 * correct[0].item() / total)
    if num_classes >= 5:
        result['top5'] = 100.0 * correct[4].item() / total
    return result


def build_knn_dataloader(dataloader_cfg: Union[dict, DataLoader],
                         max_samples: Optional[int] = None,
                         seed: int = 0) -> DataLoader:
    """Build a kNN dataloader, optionally on a random subset.

    The subset is drawn with ``random.Random(seed)``, so every rank keeps the
    same samples; it is taken before the loader is built, so features are
    only computed for the kept samples.

    Args:
        dataloader_cfg (dict | DataLoader): A dataloader config as in
            ``cfg.knn_train_dataloader``; a built loader is returned as is.
        max_samples (int, optional): Keep at most this many samples.
            Defaults to None (all).
        seed (int): Seed of the subset. Defaults to 0.

    Returns:
        DataLoader: The loader.
    """
    if isinstance(dataloader_cfg, DataLoader):
        return dataloader_cfg
    cfg = copy.deepcopy(dict(dataloader_cfg))
    dataset = cfg['dataset']
    if isinstance(dataset, dict):
        dataset = DATASETS.build(dataset)
    if max_samples is not None:
        if max_samples < 1:
            raise ValueError(f'max_samples must be >= 1, got {max_samples}')
        if hasattr(dataset, 'full_init'):
            dataset.full_init()
        if max_samples < len(dataset):
            if not hasattr(dataset, 'get_subset_'):
                raise TypeError(
                    f'{type(dataset).__name__} cannot be subsampled (no '
                    'get_subset_); use an mmengine BaseDataset or drop '
                    'max_samples')
            keep = sorted(
                random.Random(seed).sample(range(len(dataset)), max_samples))
            dataset.get_subset_(keep)
    cfg['dataset'] = dataset
    return Runner.build_dataloader(cfg, seed=seed)


def evaluate_knn(backbone: nn.Module,
                 train_dataloader: DataLoader,
                 val_dataloader: DataLoader,
                 data_preprocessor: Union[nn.Module, dict],
                 k: Union[int, Sequence[int]] = (200, 20),
                 temperature: float = 0.07,
                 show_progress: bool = False) -> Dict[str, float]:
    """Extract both splits and score weighted kNN for every ``k``.

    Args:
        backbone (nn.Module): The backbone (or a model with ``backbone``).
        train_dataloader (DataLoader): The memory bank's split.
        val_dataloader (DataLoader): The queries' split.
        data_preprocessor (nn.Module | dict): The normalisation.
        k (int | Sequence[int]): Neighbour counts. Defaults to (200, 20).
        temperature (float): τ. Defaults to 0.07.
        show_progress (bool): Progress bars. Defaults to False.

    Returns:
        Dict[str, float]: ``k{k}_top1`` (and ``k{k}_top5``) in percent,
        plus ``num_train``, ``num_val`` and ``feat_dim``.
    """
    ks = [k] if isinstance(k, int) else list(k)
    train_feats, train_labels = extract_features(
        backbone,
        train_dataloader,
        data_preprocessor,
        show_progress=show_progress)
    val_feats, val_labels = extract_features(
        backbone,
        val_dataloader,
        data_preprocessor,
        show_progress=show_progress)
    num_classes = count_classes(train_dataloader, train_labels, val_labels)
    result = {}
    for kk in ks:
        scores = weighted_knn(train_feats, train_labels, val_feats, val_labels,
                              kk, temperature, num_classes)
        result.update({f'k{kk}_{name}': v for name, v in scores.items()})
    result.update(
        num_train=train_feats.shape[0],
        num_val=val_feats.shape[0],
        feat_dim=train_feats.shape[1])
    return result


def count_classes(loader: DataLoader, *labels: torch.Tensor) -> int:
    """Classes of the data set's metainfo, else from the labels seen (a
    subset may miss classes, which must still count for top-5)."""
    classes = getattr(getattr(loader, 'dataset', None), 'CLASSES', None)
    seen = int(max(int(lab.max()) for lab in labels)) + 1
    return max(len(classes), seen) if classes else seen
