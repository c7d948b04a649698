# Copyright (c) rekd_mm contributors. All rights reserved.
"""Two gloo processes: the prototype bank comes back to rank 0's after any
divergence (a k-means that came out differently on one rank, a perturbed
bank), k-means seeds agree across unequal shards, a training step
gathers the images once, and the shuffle salt is rank 0's."""
import pytest
import torch

from tests.dist_utils import run_distributed

BATCH_PER_RANK = 8


def _batch(seed, num=BATCH_PER_RANK, size=16):
    from mmpretrain.structures import DataSample
    gen = torch.Generator().manual_seed(seed)
    views = [torch.randn(num, 3, size, size, generator=gen) for _ in range(2)]
    labels = torch.randint(3, (num, ), generator=gen)
    return views, [DataSample().set_gt_label(int(y)) for y in labels]


def _rekd_worker(rank, world_size):
    import torch.distributed as torch_dist
    import torch.nn.functional as F
    from mmengine.registry import init_default_scope
    from mmpretrain.registry import MODELS

    import rekd_mm  # noqa: F401
    from tests.toy_configs import toy_model_cfg

    init_default_scope('mmpretrain')
    torch.manual_seed(0)  # same weights and queues on both ranks
    model = MODELS.build(toy_model_cfg())
    model.train()

    gathered = []
    all_gather = torch_dist.all_gather

    def counting_all_gather(tensor_list, tensor, *args, **kwargs):
        gathered.append(tuple(tensor.shape))
        return all_gather(tensor_list, tensor, *args, **kwargs)

    torch_dist.all_gather = counting_all_gather

    def step(seed):
        views, samples = _batch(1000 * rank + seed)
        del gathered[:]
        model.loss(views, samples)
        return list(gathered)

    # Fill the 64-slot queue: 4 steps of a global batch of 16.
    for seed in range(4):
        step(seed)
    out = dict(gathers=step(4))
    # Each rank clusters the (identical) queue itself, as RelationMinerHook
    # does for source='queue'; a different seed stands for a k-means that
    # came out differently on one rank (CUDA atomics, a near-tie).
    model.miner.initialize(
        model.filled_mining_keys(), distributed=False, num_iters=3, seed=rank)
    out['clustered'] = model.miner.prototypes.clone()
    model.refresh_queue_assign()  # what the hook calls next
    out['after_clustering'] = model.miner.prototypes.clone()
    out['assign_after_clustering'] = model.queue_assign.clone()
    # A bank that drifted on rank 1 in the middle of training.
    if rank == 1:
        model.miner.prototypes.copy_(
            F.normalize(model.miner.prototypes + 0.5, dim=1))
    out['perturbed'] = model.miner.prototypes.clone()
    for seed in range(5, 6 + model.queue_refresh_interval):
        step(seed)
    out['final'] = {
        name: getattr(model, name).clone()
        for name in ('queue', 'teacher_queue', 'queue_assign', 'queue_ptr')
    }
    out['final']['prototypes'] = model.miner.prototypes.clone()

    # Ranks seeded differently (mmengine's ``diff_rank_seed``): the shuffle
    # salt is still rank 0's, so every rank draws the same permutation.
    from rekd_mm.models.utils.batch_shuffle import seeded_shuffle_salt
    torch.manual_seed(rank)
    out['own_salt'] = seeded_shuffle_salt()
    out['salt'] = MODELS.build(toy_model_cfg()).shuffle_salt.clone()
    return out


@pytest.fixture(scope='module')
def rekd_ranks():
    return run_distributed(_rekd_worker, world_size=2)


def test__bank_is_rank0s_right_after_a_clustering(rekd_ranks):
    r0, r1 = rekd_ranks
    assert not torch.equal(r0['clustered'], r1['clustered'])  # it differed
    assert torch.equal(r0['after_clustering'], r1['after_clustering'])
    assert torch.equal(r0['after_clustering'], r0['clustered'])
    assert torch.equal(r0['assign_after_clustering'],
                       r1['assign_after_clustering'])


def test__perturbed_bank_comes_back_to_equality(rekd_ranks):
    r0, r1 = rekd_ranks
    assert not torch.equal(r0['perturbed'], r1['perturbed'])
    for name, value in r0['final'].items():
        assert torch.equal(value, r1['final'][name]), name


def test__shuffle_salt_is_rank0s_whatever_the_ranks_seeds(rekd_ranks):
    r0, r1 = rekd_ranks
    assert not torch.equal(r0['own_salt'], r1['own_salt'])
    assert torch.equal(r0['salt'], r0['own_salt'])
    assert torch.equal(r1['salt'], r0['own_salt'])


def test__one_image_gather_per_step(rekd_ranks):
    gathers = rekd_ranks[0]['gathers']
    images = [shape for shape in gathers if len(shape) == 4]
    assert images == [(BATCH_PER_RANK, 3, 16, 16)], gathers
    # The keys of both encoders travel together (and the labels).
    assert len(gathers) == 3, gathers


def _light_worker(rank, world_size):
    """The shuffle machinery and k-means seeding (no model)."""
    import importlib

    import torch.nn.functional as F

    from rekd_mm.models.utils.batch_shuffle import (gather_shuffled,
                                                    gather_unshuffled,
                                                    shuffle_permutation)
    out = {}
    batch = 4
    samples = (rank * batch + torch.arange(batch)).float()[:, None]
    perm = shuffle_permutation(torch.tensor(3), batch * world_size)
    shuffled = gather_shuffled(samples, perm)
    # An "encoder" per sample: keys of two widths.
    (mine2, mine1), (all2,
                     _) = gather_unshuffled([shuffled.repeat(1, 2), -shuffled],
                                            perm)
    out['shuffle'] = dict(
        samples=samples, shuffled=shuffled, mine=(mine2, mine1), all=all2)

    # Split BN under the shuffle: 2 slices on each of the 2 ranks.
    from rekd_mm.models.utils import SplitBatchNorm
    images = torch.randn(
        batch, 3, 2, 2, generator=torch.Generator().manual_seed(10 + rank))
    normed = SplitBatchNorm(3, num_splits=2)(gather_shuffled(images, perm))
    (keys, ), (all_keys, ) = gather_unshuffled([normed.flatten(1)], perm)
    out['split_bn'] = dict(images=images, keys=keys, all=all_keys, perm=perm)

    kmeans = importlib.import_module('rekd_mm.models.utils.spherical_kmeans')
    # Without the final broadcast: what each rank computed by itself.
    kmeans.broadcast = lambda *args, **kwargs: None
    gen = torch.Generator().manual_seed(rank)
    shard = F.normalize(
        torch.randn(40 if rank == 0 else 25, 8, generator=gen), dim=1)
    for init in ('kmeans++', 'random'):
        seeds, _ = kmeans.spherical_kmeans(
            shard, 6, num_iters=0, init=init, max_seed_pool=16)
        out[init] = seeds
    return out


@pytest.fixture(scope='module')
def light_ranks():
    return run_distributed(_light_worker, world_size=2)


def test__shuffle_then_unshuffle_restores_every_ranks_keys(light_ranks):
    results = [r['shuffle'] for r in light_ranks]
    everything = torch.arange(8.)[:, None]
    shuffled = torch.cat([r['shuffled'] for r in results])
    assert sorted(shuffled[:, 0].tolist()) == list(range(8))
    assert not torch.equal(shuffled, everything)
    for res in results:
        mine2, mine1 = res['mine']
        assert torch.equal(mine2, res['samples'].repeat(1, 2))
        assert torch.equal(mine1, -res['samples'])
        assert torch.equal(res['all'], everything.repeat(1, 2))


def test__kmeans_seeds_agree_across_unequal_shards(light_ranks):
    """With a subsampled seed pool, every rank must seed the same
    centroids although its shard has another size."""
    r0, r1 = light_ranks
    for init in ('kmeans++', 'random'):
        assert torch.equal(r0[init], r1[init]), init


def test__split_bn_on_two_ranks_is_split_bn_on_the_global_batch(light_ranks):
    """Two ranks with two slices each normalise the shuffled global batch
    exactly as one process with four slices: the one-process shuffle-BN is
    the multi-process one."""
    from rekd_mm.models.utils import SplitBatchNorm
    results = [r['split_bn'] for r in light_ranks]
    perm = results[0]['perm']
    images = torch.cat([r['images'] for r in results])
    shuffled = SplitBatchNorm(3, num_splits=4)(images[perm]).flatten(1)
    expected = torch.empty_like(shuffled)
    expected[perm] = shuffled
    for rank, res in enumerate(results):
        torch.testing.assert_close(res['all'], expected)
        torch.testing.assert_close(res['keys'],
                                   expected[4 * rank:4 * rank + 4])
