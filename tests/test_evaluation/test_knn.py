# Copyright (c) rekd_mm contributors. All rights reserved.
"""Weighted kNN (InstDisc) and distributed feature extraction."""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import rekd_mm  # noqa: F401
from rekd_mm.evaluation import (build_knn_dataloader, extract_features,
                                weighted_knn)
from tests.dist_utils import run_distributed
from tests.toy_configs import FASHION_MNIST_ROOT, toy_knn_loader_cfg

PREPROCESSOR = dict(
    type='SelfSupDataPreprocessor',
    mean=[72.94, 72.94, 72.94],
    std=[90.02, 90.02, 90.02],
    to_rgb=False)


def _unit(deg: float) -> list:
    return [math.cos(math.radians(deg)), math.sin(math.radians(deg))]


def _reference_knn(train, train_labels, test, test_labels, k, T, num_classes):
    """Per-query, loop-based reading of the InstDisc rule."""
    hits1 = hits5 = 0
    for q, y in zip(test.tolist(), test_labels.tolist()):
        sims = [sum(a * b for a, b in zip(q, t)) for t in train.tolist()]
        order = sorted(range(len(sims)), key=lambda i: -sims[i])[:k]
        votes = [0.0] * num_classes
        for i in order:
            votes[int(train_labels[i])] += math.exp(sims[i] / T)
        ranked = sorted(range(num_classes), key=lambda c: -votes[c])
        hits1 += ranked[0] == y
        hits5 += y in ranked[:5]
    n = len(test_labels)
    return 100.0 * hits1 / n, 100.0 * hits5 / n


def test__weighted_vote_follows_the_closed_form_and_the_temperature():
    # Query at 0 deg. Neighbours: one class-1 point at cos = 1, two class-0
    # points at cos = 0.5, a class-0 point at cos = -1 (outside k = 3).
    train = torch.tensor([_unit(0), _unit(60), _unit(-60), _unit(180)])
    train_labels = torch.tensor([1, 0, 0, 0])
    query = torch.tensor([_unit(0)])
    # T = 0.5: class 1 gets e^2 = 7.39 > class 0's 2 e^1 = 5.44 (a majority
    # vote would pick class 0).
    assert math.exp(1 / 0.5) > 2 * math.exp(0.5 / 0.5)
    sharp = weighted_knn(
        train,
        train_labels,
        query,
        torch.tensor([1]),
        k=3,
        T=0.5,
        num_classes=2)
    assert sharp == dict(top1=100.0)  # 2 classes: no top-5
    # T = 2: e^0.5 = 1.65 < 2 e^0.25 = 2.57, class 0 wins.
    assert math.exp(1 / 2) < 2 * math.exp(0.5 / 2)
    flat = weighted_knn(
        train,
        train_labels,
        query,
        torch.tensor([1]),
        k=3,
        T=2.0,
        num_classes=2)
    assert flat['top1'] == 0.0
    # k = 1: only the class-1 neighbour votes, whatever T.
    assert weighted_knn(
        train,
        train_labels,
        query,
        torch.tensor([1]),
        k=1,
        T=2.0,
        num_classes=2)['top1'] == 100.0
    # k larger than the bank is clipped: all four vote, class 0 wins at T=2.
    assert weighted_knn(
        train,
        train_labels,
        query,
        torch.tensor([0]),
        k=50,
        T=2.0,
        num_classes=2)['top1'] == 100.0


def test__chunked_scores_equal_the_per_query_reference():
    g = torch.Generator().manual_seed(0)
    train = F.normalize(torch.randn(40, 6, generator=g), dim=1)
    test = F.normalize(torch.randn(17, 6, generator=g), dim=1)
    train_labels = torch.randint(0, 7, (40, ), generator=g)
    test_labels = torch.randint(0, 7, (17, ), generator=g)
    for k, T in ((5, 0.07), (12, 0.5)):
        got = weighted_knn(
            train,
            train_labels,
            test,
            test_labels,
            k=k,
            T=T,
            num_classes=7,
            chunk_size=4)
        top1, top5 = _reference_knn(train, train_labels, test, test_labels, k,
                                    T, 7)
        assert got['top1'] == pytest.approx(top1)
        assert got['top5'] == pytest.approx(top5)


def test__well_separated_clusters_are_classified_perfectly():
    g = torch.Generator().manual_seed(1)
    centers = F.normalize(torch.randn(6, 32, generator=g), dim=1)
    labels = torch.arange(6).repeat_interleave(20)
    feats = F.normalize(
        centers[labels] + 0.05 * torch.randn(120, 32, generator=g), dim=1)
    test_labels = torch.arange(6).repeat_interleave(5)
    test = F.normalize(
        centers[test_labels] + 0.05 * torch.randn(30, 32, generator=g), dim=1)
    result = weighted_knn(feats, labels, test, test_labels, k=200, T=0.07)
    assert result == dict(top1=100.0, top5=100.0)


def test__top5_is_reported_only_with_at_least_five_classes():
    feats = F.normalize(torch.randn(10, 4), dim=1)
    labels = torch.arange(10) % 4
    assert 'top5' not in weighted_knn(
        feats, labels, feats, labels, k=3, num_classes=4)
    # Four classes seen, but the data set declares five.
    assert 'top5' in weighted_knn(
        feats, labels, feats, labels, k=3, num_classes=5)
    # Inferred from the labels: five seen.
    assert 'top5' in weighted_knn(
        feats, torch.arange(10) % 5, feats, torch.arange(10) % 5, k=3)


def test__unlabelled_samples_are_rejected():
    feats = F.normalize(torch.randn(4, 3), dim=1)
    with pytest.raises(ValueError, match='label'):
        weighted_knn(
            feats,
            torch.tensor([0, 1, -1, 0]),
            feats,
            torch.tensor([0, 1, 1, 0]),
            k=2)


def _toy_backbone() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU())


def _extract(num_samples: int):
    from mmengine.registry import init_default_scope
    init_default_scope('mmpretrain')
    loader = build_knn_dataloader(
        toy_knn_loader_cfg('test', num_samples, batch_size=4))
    feats, labels = extract_features(_toy_backbone(), loader, PREPROCESSOR)
    return feats, labels, loader.dataset


def test__features_are_pooled_normalised_and_in_dataset_order():
    feats, labels, dataset = _extract(9)
    assert feats.shape == (9, 8)
    assert torch.allclose(feats.norm(dim=1), torch.ones(9))
    assert labels.tolist() == [
        int(dataset.get_gt_labels()[i]) for i in range(9)
    ]
    # Sample 5 by hand: normalise, convolve, average, L2-normalise.
    img = torch.from_numpy(dataset[5]['inputs'].numpy()).float()
    x = ((img - 72.94) / 90.02)[None]
    expected = F.normalize(_toy_backbone()(x).mean((2, 3)), dim=1)[0]
    assert torch.allclose(feats[5], expected, atol=1e-5)


def _dist_extract(rank, world_size, num_samples):
    feats, labels, _ = _extract(num_samples)
    return dict(feats=feats, labels=labels)


def test__distributed_extraction_equals_single_process():
    # 9 samples on 2 ranks: the sampler pads rank 1 with a duplicate, which
    # must be dropped, and the shards must be re-interleaved.
    single, labels, _ = _extract(9)
    results = run_distributed(_dist_extract, world_size=2, args=(9, ))
    for result in results:
        assert result['feats'].shape == (9, 8)
        assert torch.allclose(result['feats'], single, atol=1e-6)
        assert torch.equal(result['labels'], labels)


def test__demo_knn_splits_are_the_train_and_test_files():
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmpretrain.registry import DATASETS

    from tests.toy_configs import REPO_ROOT
    init_default_scope('mmpretrain')
    cfg = Config.fromfile(
        f'{REPO_ROOT}/configs/_base_/fashion-mnist_mocov2-32px.py')
    sizes = {}
    for split in ('train', 'val'):
        dataset_cfg = cfg[f'knn_{split}_dataloader'].dataset
        dataset_cfg.data_root = FASHION_MNIST_ROOT
        sizes[split] = len(DATASETS.build(dataset_cfg))
    # mmpretrain 1.2's FashionMNIST picks the file from test_mode: with
    # split='test' alone the "test" loader would hold the 60000 training
    # images.
    assert sizes == dict(train=60000, val=10000)
