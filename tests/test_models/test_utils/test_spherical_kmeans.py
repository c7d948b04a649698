# Copyright (c) rekd_mm contributors. All rights reserved.
import pytest
import torch
import torch.nn.functional as F

from rekd_mm.models.utils import (assign_to_centroids, kmeans_objective,
                                  spherical_kmeans)
from tests.dist_utils import run_distributed


def _clusters(num_clusters=4, per_cluster=20, dim=8, noise=0.05, seed=0):
    """Unit points around ``num_clusters`` orthogonal directions, shuffled;
    returns the points and their true cluster."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.eye(dim)[:num_clusters]
    labels = torch.arange(num_clusters).repeat_interleave(per_cluster)
    points = centres[labels] + noise * torch.randn(
        len(labels), dim, generator=gen)
    order = torch.randperm(len(labels), generator=gen)
    return F.normalize(points[order], dim=1), labels[order]


def _same_partition(pred, true):
    """Whether two labelings agree up to a permutation of cluster ids."""
    pairs = set(zip(pred.tolist(), true.tolist()))
    return len(pairs) == len(set(true.tolist())) == len(set(pred.tolist()))


@pytest.mark.parametrize('init', ['kmeans++', 'random'])
def test__recovers_well_separated_clusters(init):
    points, labels = _clusters()
    centroids, info = spherical_kmeans(
        points, 4, num_iters=10, init=init, seed=0, distributed=False)
    assign, _ = assign_to_centroids(points, centroids)
    assert _same_partition(assign, labels)
    assert info['objective'] > 0.98
    assert info['objective'] == pytest.approx(
        kmeans_objective(points, centroids), abs=1e-6)
    assert info['num_samples'] == 80
    torch.testing.assert_close(
        centroids.norm(dim=1), torch.ones(4), rtol=0, atol=1e-6)


def test__more_clusters_than_points_raises():
    points, _ = _clusters(per_cluster=2)
    with pytest.raises(ValueError, match='num_clusters'):
        spherical_kmeans(points, 9, distributed=False)


def test__empty_clusters_are_reseeded():
    # Five copies of one point and a single other point: random seeding
    # often picks the duplicate twice, which leaves a cluster empty. Only
    # re-seeding it with the worst-served point (b) reaches objective 1.
    a = F.normalize(torch.tensor([[1., 2., 3.]]), dim=1)
    b = F.normalize(torch.tensor([[-3., 1., 0.]]), dim=1)
    points = torch.cat([a.repeat(5, 1), b])
    reseeded = 0
    for seed in range(10):
        centroids, info = spherical_kmeans(
            points,
            2,
            num_iters=3,
            init='random',
            seed=seed,
            distributed=False)
        reseeded += info['num_reseeded']
        assert info['objective'] == pytest.approx(1.0, abs=1e-6)
        assign, _ = assign_to_centroids(points, centroids)
        assert assign[5] != assign[0]
    assert reseeded > 0


def test__chunked_assignment_equals_unchunked():
    points, _ = _clusters(per_cluster=25, noise=0.5)
    centroids = F.normalize(torch.randn(4, 8), dim=1)
    idx_full, sim_full = assign_to_centroids(points, centroids, 65536)
    idx_chunk, sim_chunk = assign_to_centroids(points, centroids, 7)
    assert torch.equal(idx_full, idx_chunk)
    torch.testing.assert_close(sim_full, sim_chunk, rtol=0, atol=1e-6)
    full, _ = spherical_kmeans(points, 4, chunk_size=65536, distributed=False)
    chunked, _ = spherical_kmeans(points, 4, chunk_size=7, distributed=False)
    torch.testing.assert_close(full, chunked, rtol=0, atol=1e-6)


@pytest.mark.parametrize('init', ['kmeans++', 'random'])
def test__same_seed_gives_the_same_result(init):
    points, _ = _clusters(per_cluster=25, noise=0.6)
    first, _ = spherical_kmeans(
        points, 4, init=init, seed=3, distributed=False)
    second, _ = spherical_kmeans(
        points, 4, init=init, seed=3, distributed=False)
    assert torch.equal(first, second)
    others = [
        spherical_kmeans(points, 4, init=init, seed=s, distributed=False)[0]
        for s in (4, 5, 6)
    ]
    assert any(not torch.allclose(first, o) for o in others)


def test__unknown_init_raises():
    points, _ = _clusters()
    with pytest.raises(ValueError, match='init'):
        spherical_kmeans(points, 4, init='farthest', distributed=False)


# Noisy, overlapping clusters so that the result depends on every point.
_DIST_DATA = dict(num_clusters=5, per_cluster=16, noise=0.6, seed=1)


def _kmeans_on_shards(rank, world_size, splits):
    """k-means on this rank's contiguous shard, once per split point."""
    points, _ = _clusters(**_DIST_DATA)
    results = []
    for split in splits:
        bounds = [0, split, len(points)]
        shard = points[bounds[rank]:bounds[rank + 1]]
        centroids, info = spherical_kmeans(
            shard, 5, num_iters=8, seed=2, distributed=True)
        assign, _ = assign_to_centroids(points, centroids)
        results.append(dict(centroids=centroids, assign=assign, info=info))
    return results


def test__distributed_equals_single_process():
    points, _ = _clusters(**_DIST_DATA)
    single, single_info = spherical_kmeans(
        points, 5, num_iters=8, seed=2, distributed=False)
    single_assign, _ = assign_to_centroids(points, single)
    # The data are hard enough that every point matters.
    assert single_info['objective'] < 0.9
    splits = (40, 25)  # equal and unequal shards

    ranks = run_distributed(_kmeans_on_shards, world_size=2, args=(splits, ))

    for case in range(len(splits)):
        rank0, rank1 = ranks[0][case], ranks[1][case]
        assert torch.equal(rank0['centroids'], rank1['centroids'])
        for res in (rank0, rank1):
            torch.testing.assert_close(
                res['centroids'], single, rtol=0, atol=1e-5)
            assert torch.equal(res['assign'], single_assign)
            assert res['info']['num_samples'] == len(points)
            assert res['info']['objective'] == pytest.approx(
                single_info['objective'], abs=1e-5)
