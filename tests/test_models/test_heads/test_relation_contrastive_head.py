# Copyright (c) rekd_mm contributors. All rights reserved.
import math

import pytest
import torch
import torch.nn.functional as F
from mmpretrain.models.heads import ContrastiveHead

from rekd_mm.models.heads import RelationContrastiveHead


def _random_inputs(num=4, dim=8, length=6, seed=0):
    gen = torch.Generator().manual_seed(seed)
    query = F.normalize(torch.randn(num, dim, generator=gen), dim=1)
    key = F.normalize(torch.randn(num, dim, generator=gen), dim=1)
    queue = F.normalize(torch.randn(dim, length, generator=gen), dim=0)
    return query, key, queue


@pytest.mark.parametrize('mask', ['none', 'all_false'])
def test__loss_without_mined_positives_is_mocov2_infonce(mask):
    query, key, queue = _random_inputs()
    pos_mask = None if mask == 'none' else torch.zeros(
        query.shape[0], queue.shape[1], dtype=torch.bool)
    head = RelationContrastiveHead(temperature=0.2)
    reference = ContrastiveHead(
        loss=dict(type='CrossEntropyLoss'), temperature=0.2)

    loss = head.loss(query, key, queue, pos_mask)

    l_pos = (query * key).sum(1, keepdim=True)
    expected = reference.loss(l_pos, query @ queue)
    torch.testing.assert_close(loss, expected, rtol=0, atol=1e-6)


def test__multi_positive_loss_matches_closed_form():
    # Two anchors, two queue slots: a 2 x 3 logit matrix [own key | U].
    tau = 0.5
    s = math.sin(math.radians(60))
    query = torch.tensor([[1., 0.], [0., 1.]])
    key = torch.tensor([[1., 0.], [math.cos(math.radians(60)), s]])
    queue = torch.tensor([[0., -1.], [1., 0.]])  # columns u0=(0,1), u1=(-1,0)
    pos_mask = torch.tensor([[True, False], [True, True]])
    head = RelationContrastiveHead(temperature=tau, loss_weight=2.0)

    loss = head.loss(query, key, queue, pos_mask)

    # Anchor 0: logits (1, 0, -1)/tau, positives {own key, u0}.
    log_z0 = math.log(math.exp(1 / tau) + math.exp(0) + math.exp(-1 / tau))
    loss0 = -((1 / tau - log_z0) + (0 - log_z0)) / 2
    # Anchor 1: logits (s, 1, 0)/tau, positives {own key, u0, u1}.
    log_z1 = math.log(math.exp(s / tau) + math.exp(1 / tau) + math.exp(0))
    loss1 = -((s / tau - log_z1) + (1 / tau - log_z1) + (0 - log_z1)) / 3
    expected = 2.0 * (loss0 + loss1) / 2
    assert loss.item() == pytest.approx(expected, abs=1e-6)


def test__gradient_flows_to_the_query_only():
    query, key, queue = _random_inputs()
    query.requires_grad_(True)
    key.requires_grad_(True)
    queue.requires_grad_(True)
    pos_mask = torch.zeros(4, 6, dtype=torch.bool)
    pos_mask[0, 1] = pos_mask[0, 4] = pos_mask[2, 0] = True
    tau = 0.2
    head = RelationContrastiveHead(temperature=tau)

    head.loss(query, key, queue, pos_mask).backward()

    assert key.grad is None and queue.grad is None
    # d/dq_i of the mean loss: (sum_j p_ij c_j - mean_{p in P(i)} c_p)/(N tau)
    with torch.no_grad():
        cands = torch.cat([key[:, None], queue.t().expand(4, -1, -1)], 1)
        prob = torch.softmax((cands @ query[:, :, None]).squeeze(-1) / tau, 1)
        positive = torch.cat([torch.ones(4, 1), pos_mask.float()], 1)
        positive = positive / positive.sum(1, keepdim=True)
        expected = ((prob - positive)[:, :, None] * cands).sum(1) / (4 * tau)
    torch.testing.assert_close(query.grad, expected, rtol=1e-5, atol=1e-6)


def test__non_positive_temperature_is_rejected():
    with pytest.raises(ValueError, match='temperature'):
        RelationContrastiveHead(temperature=0.0)
