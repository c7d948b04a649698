# Copyright (c) rekd_mm contributors. All rights reserved.
"""The student loss's knobs against hand-computed values on a 2-anchor,
3-slot example (``pos_combine``, ``own_key_weight``, ``mined_scale``)."""
import math

import pytest
import torch

from rekd_mm.models.heads import RelationContrastiveHead

# Unit 2-D vectors: the logits are easy to write down.
QUERY = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
KEY = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
QUEUE = torch.tensor([[0.0, 0.6, -1.0], [1.0, 0.8, 0.0]])  # (D, L) = (2, 3)
MASK = torch.tensor([[True, True, False], [False, False, False]])
TAU = 0.5


def _probs():
    """softmax rows of [own key, queue] / τ, by hand."""
    rows = []
    for q, k in zip(QUERY.tolist(), KEY.tolist()):
        logits = [q[0] * k[0] + q[1] * k[1]]
        logits += [
            q[0] * QUEUE[0, j].item() + q[1] * QUEUE[1, j].item()
            for j in range(3)
        ]
        exps = [math.exp(x / TAU) for x in logits]
        rows.append([e / sum(exps) for e in exps])
    return rows


def _head(**kwargs):
    return RelationContrastiveHead(temperature=TAU, **kwargs)


def test__mean_log_with_equal_weights_is_the_contract_form():
    p = _probs()
    # Anchor 0: own key + slots 0, 1 (three positives); anchor 1: InfoNCE.
    expected = (-(math.log(p[0][0]) + math.log(p[0][1]) + math.log(p[0][2])) /
                3 - math.log(p[1][0])) / 2
    loss = _head().loss(QUERY, KEY, QUEUE, MASK)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test__log_sum_is_the_log_of_the_mean_probability():
    p = _probs()
    expected = (-math.log(
        (p[0][0] + p[0][1] + p[0][2]) / 3) - math.log(p[1][0])) / 2
    loss = _head(pos_combine='log_sum').loss(QUERY, KEY, QUEUE, MASK)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize('combine', ['mean_log', 'log_sum'])
def test__own_key_weight_splits_the_rest_among_mined(combine):
    p = _probs()
    alpha = 0.7
    w = [alpha, 0.15, 0.15]
    vals = [p[0][0], p[0][1], p[0][2]]
    if combine == 'mean_log':
        first = -sum(wi * math.log(v) for wi, v in zip(w, vals))
    else:
        first = -math.log(sum(wi * v for wi, v in zip(w, vals)))
    expected = (first - math.log(p[1][0])) / 2
    loss = _head(
        pos_combine=combine,
        own_key_weight=alpha).loss(QUERY, KEY, QUEUE, MASK)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize('combine', ['mean_log', 'log_sum'])
def test__no_mined_positive_is_infonce(combine):
    p = _probs()
    expected = -(math.log(p[0][0]) + math.log(p[1][0])) / 2
    head = _head(pos_combine=combine, own_key_weight=0.3)
    none = torch.zeros_like(MASK)
    assert head.loss(QUERY, KEY, QUEUE, none).item() == pytest.approx(
        expected, rel=1e-6)
    assert head.loss(QUERY, KEY, QUEUE).item() == pytest.approx(
        expected, rel=1e-6)
    # A zero warm-up factor hands all the weight back to the own key.
    assert _head(pos_combine=combine).loss(
        QUERY, KEY, QUEUE, MASK, mined_scale=0.0).item() == pytest.approx(
            expected, rel=1e-6)


def test__mined_scale_scales_the_mined_share():
    head = _head()
    weights = head.positive_weights(MASK, mined_scale=0.5)
    # Equal weights give the mined pair 2/3; half of it is 1/3.
    torch.testing.assert_close(weights[0],
                               torch.tensor([2 / 3, 1 / 6, 1 / 6, 0.0]))
    torch.testing.assert_close(weights[1], torch.tensor([1.0, 0, 0, 0]))


def test__log_sum_gradient_is_finite_with_many_zero_weights():
    query = QUERY.clone().requires_grad_(True)
    _head(pos_combine='log_sum').loss(query, KEY, QUEUE, MASK).backward()
    assert torch.isfinite(query.grad).all() and query.grad.abs().sum() > 0


@pytest.mark.parametrize('kwargs, key', [
    (dict(pos_combine='sum_log'), 'model.head.pos_combine'),
    (dict(own_key_weight=0.0), 'model.head.own_key_weight'),
    (dict(own_key_weight=1.5), 'model.head.own_key_weight'),
    (dict(temperature=0.0), 'model.head.temperature'),
])
def test__bad_arguments_are_named(kwargs, key):
    with pytest.raises(ValueError, match=key):
        RelationContrastiveHead(**kwargs)


def test__logits_stay_float32_under_cpu_bf16_autocast():
    head = _head(pos_combine='log_sum')
    expected = head.loss(QUERY, KEY, QUEUE, MASK)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        got = head.loss(QUERY, KEY, QUEUE, MASK)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)
