# Copyright (c) rekd_mm contributors. All rights reserved.
import pytest
import torch
import torch.nn.functional as F

from rekd_mm.evaluation.feature_probe import (feature_linear_probe,
                                              fit_logistic_regression)


def test__fit_reaches_the_optimum_of_a_convex_problem():
    gen = torch.Generator().manual_seed(0)
    feats = torch.randn(200, 5, generator=gen)
    labels = torch.randint(0, 3, (200, ), generator=gen)
    wd = 1e-2
    model = fit_logistic_regression(feats, labels, 3, wd)
    assert model['converged']
    # The gradient of the objective vanishes at the returned point.
    weight = model['weight'].clone().requires_grad_(True)
    bias = model['bias'].clone().requires_grad_(True)
    loss = F.cross_entropy(feats @ weight.t() + bias, labels) + \
        0.5 * wd * weight.pow(2).sum()
    loss.backward()
    assert weight.grad.abs().max() < 1e-4 and bias.grad.abs().max() < 1e-4
    assert abs(loss.item() - model['loss']) < 1e-6


def _clusters(seed, classes, dim, spread, num_train, num_val):
    """Gaussian clusters (unit noise) around ``classes`` random centres scaled
    by ``spread``: training and validation features and labels."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=gen) * spread
    train_y = torch.randint(0, classes, (num_train, ), generator=gen)
    val_y = torch.randint(0, classes, (num_val, ), generator=gen)
    train_x = centres[train_y] + torch.randn(num_train, dim, generator=gen)
    val_x = centres[val_y] + torch.randn(num_val, dim, generator=gen)
    return train_x, train_y, val_x, val_y


def test__separable_classes_are_probed_perfectly_and_noise_is_not():
    train_x, train_y, val_x, val_y = _clusters(
        seed=1, classes=4, dim=16, spread=5, num_train=400, num_val=100)
    result = feature_linear_probe(train_x, train_y, val_x, val_y, 4)
    assert result['top1'] == 100.0
    assert result['weight_decay'] in (1e-4, 1e-3, 1e-2)
    # Features unrelated to the labels: chance level on held-out data.
    gen = torch.Generator().manual_seed(2)
    noise = feature_linear_probe(
        torch.randn(400, 16, generator=gen), train_y,
        torch.randn(100, 16, generator=gen), val_y, 4)
    assert noise['top1'] < 45


def test__a_start_at_the_optimum_needs_no_iteration_and_changes_nothing():
    gen = torch.Generator().manual_seed(2)
    feats = torch.randn(300, 6, generator=gen)
    labels = torch.randint(0, 3, (300, ), generator=gen)
    cold = fit_logistic_regression(feats, labels, 3, 1e-2)
    warm = fit_logistic_regression(
        feats, labels, 3, 1e-2, init=(cold['weight'], cold['bias']))
    assert cold['iterations'] > 5
    assert warm['converged'] and warm['iterations'] <= 1
    torch.testing.assert_close(
        warm['weight'], cold['weight'], atol=1e-4, rtol=0)
    # A start elsewhere reaches the same (unique) optimum.
    far = fit_logistic_regression(
        feats,
        labels,
        3,
        1e-2,
        init=(torch.randn(3, 6, generator=gen), torch.randn(3, generator=gen)))
    torch.testing.assert_close(
        far['weight'], cold['weight'], atol=1e-3, rtol=0)


def test__the_penalty_is_chosen_on_a_subset_of_the_fit_split():
    gen = torch.Generator().manual_seed(3)
    centres = torch.randn(3, 8, generator=gen) * 3
    train_y = torch.randint(0, 3, (500, ), generator=gen)
    train_x = centres[train_y] + torch.randn(500, 8, generator=gen)
    result = feature_linear_probe(
        train_x,
        train_y,
        train_x[:50],
        train_y[:50],
        3,
        max_select_samples=120)
    # 50 held out, 450 left, of which 120 fit each candidate penalty.
    assert result['select_samples'] == 120
    assert set(result['holdout_top1']) == {'0.0001', '0.001', '0.01'}
    assert result['converged'] and result['top1'] > 90
    everything = feature_linear_probe(
        train_x,
        train_y,
        train_x[:50],
        train_y[:50],
        3,
        max_select_samples=None)
    assert everything['select_samples'] == 450


def test__the_probe_does_not_depend_on_the_features_overall_scale():
    # An untrained MobileNetV2 in eval mode outputs features of ~1e-9: the
    # standardisation must make them the same problem as at scale 1 (an
    # absolute std floor of 1e-6 once flattened them to ~0 and the probe
    # stopped at chance, "converged").
    train_x, train_y, val_x, val_y = _clusters(
        seed=3, classes=3, dim=8, spread=3, num_train=300, num_val=90)
    unit = feature_linear_probe(train_x, train_y, val_x, val_y, 3)
    tiny = feature_linear_probe(train_x * 1e-9, train_y, val_x * 1e-9, val_y,
                                3)
    assert unit['top1'] > 90
    assert tiny['top1'] == unit['top1']
    assert tiny['weight_decay'] == unit['weight_decay']


def test__constant_features_are_refused():
    labels = torch.tensor([0, 1, 0, 1])
    with pytest.raises(ValueError, match='constant or not finite'):
        feature_linear_probe(
            torch.ones(4, 3), labels, torch.ones(2, 3), labels[:2], 2)
