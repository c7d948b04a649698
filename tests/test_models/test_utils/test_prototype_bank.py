# Copyright (c) rekd_mm contributors. All rights reserved.
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rekd_mm.models.utils import PrototypeBank


def _bank(threshold=0.5, momentum=0.9):
    bank = PrototypeBank(
        num_prototypes=3, feat_dim=3, threshold=threshold, momentum=momentum)
    bank.prototypes.copy_(torch.eye(3))
    bank.initialized.fill_(True)
    return bank


def _at_cosine(c):
    """A unit vector with cosine ``c`` to e0, 0 to e2 and sqrt(1-c^2) to e1
    (below ``c`` for the values used)."""
    return torch.tensor([[c, math.sqrt(1 - c * c), 0.]])


def test__connection_step_honours_the_threshold():
    bank = _bank(threshold=0.8)
    below, sim_below = bank.assign(_at_cosine(0.8 - 1e-3))
    above, sim_above = bank.assign(_at_cosine(0.8 + 1e-3))
    assert below.tolist() == [-1]
    assert above.tolist() == [0]
    assert sim_below.item() == pytest.approx(0.799, abs=1e-6)
    assert sim_above.item() == pytest.approx(0.801, abs=1e-6)


def test__connection_step_returns_argmax_prototype():
    bank = _bank(threshold=0.0)
    emb = F.normalize(
        torch.tensor([[0.1, 0.9, 0.2], [0.2, 0.1, 0.9], [0.9, 0.3, 0.1]]),
        dim=1)
    assign, sim = bank.assign(emb)
    assert assign.tolist() == [1, 2, 0]
    torch.testing.assert_close(sim, emb.max(1).values)


def test__threshold_one_leaves_non_identical_embeddings_unassigned():
    bank = _bank(threshold=1.0)
    gen = torch.Generator().manual_seed(0)
    emb = F.normalize(torch.randn(32, 3, generator=gen), dim=1)
    assign, _ = bank.assign(emb)
    assert (assign == -1).all()


def test__update_step_matches_the_formula():
    m0 = 0.9
    bank = _bank(threshold=0.3, momentum=m0)
    bank.prototypes.copy_(
        F.normalize(
            torch.tensor([[1., .2, 0.], [0., 1., .3], [0., 0., 1.]]), dim=1))
    before = bank.prototypes.clone()
    # Two anchors near p0, one near p1, one unassigned (far from all);
    # p2 gets no anchor and must not move.
    emb = F.normalize(
        torch.tensor([[1., .5, 0.], [.8, 0., .1], [.1, 1., 0.],
                      [-1., -1., -.2]]),
        dim=1)
    assign, sim = bank.assign(emb)
    assert assign.tolist() == [0, 0, 1, -1]

    bank.update(emb, assign, sim)

    z, p = emb.double().numpy(), before.double().numpy()
    expected = p.copy()
    for k, members in ((0, [0, 1]), (1, [2])):
        s = z[members] @ p[k]
        a_k = (s[:, None] * z[members]).sum(0) / s.sum()
        m_k = 1 - (1 - m0) * s.mean()
        new = m_k * p[k] + (1 - m_k) * a_k
        expected[k] = new / np.linalg.norm(new)
    np.testing.assert_allclose(bank.prototypes.numpy(), expected, atol=1e-6)
    assert torch.equal(bank.prototypes[2], before[2])
    assert not torch.allclose(bank.prototypes[0], before[0])


@pytest.mark.parametrize('kwargs, key', [
    (dict(num_prototypes=0), 'num_prototypes'),
    (dict(num_prototypes=2.5), 'num_prototypes'),
    (dict(num_prototypes=4, threshold=1.5), 'threshold'),
    (dict(num_prototypes=4, threshold=-1.1), 'threshold'),
    (dict(num_prototypes=4, momentum=1.0), 'momentum'),
    (dict(num_prototypes=4, momentum=-0.1), 'momentum'),
])
def test__invalid_arguments_raise_naming_the_key(kwargs, key):
    with pytest.raises(ValueError, match=f'model.miner.{key}'):
        PrototypeBank(feat_dim=3, **kwargs)


def test__state_lives_in_buffers_and_round_trips():
    bank = PrototypeBank(num_prototypes=4, feat_dim=8)
    assert not bank.is_initialized
    gen = torch.Generator().manual_seed(0)
    bank.initialize(
        torch.randn(20, 8, generator=gen),
        current_iter=7,
        distributed=False,
        num_iters=3)
    state = bank.state_dict()
    assert {'prototypes', 'initialized', 'last_cluster_iter'} <= set(state)
    assert bool(state['initialized']) and int(state['last_cluster_iter']) == 7

    restored = PrototypeBank(num_prototypes=4, feat_dim=8)
    restored.load_state_dict(state)
    assert restored.is_initialized
    assert int(restored.last_cluster_iter) == 7
    assert torch.equal(restored.prototypes, bank.prototypes)
    torch.testing.assert_close(
        restored.prototypes.norm(dim=1), torch.ones(4), rtol=0, atol=1e-6)
