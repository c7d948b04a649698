# Copyright (c) rekd_mm contributors. All rights reserved.
"""Distributed spherical k-means without faiss.

Written by hand because neither mmengine nor mmpretrain ships a k-means, and
faiss is neither a dependency nor identical across ranks by construction. The
design follows solo-learn's ``KMeans``: a local E-step on each rank's shard,
all-reduced per-cluster sums and counts, re-normalised means, and seeds chosen
identically on every rank.
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from mmengine.dist import (all_gather, all_reduce, broadcast, get_rank,
                           get_world_size)

# Most similarity scores held at once by ``assign_to_centroids``. On CPU a
# block that stays in cache, written into one reused buffer, is what makes the
# E-step fast: a fresh 65536 x K block per chunk costs page faults and memory
# bandwidth (4x slower at K=10000, 3.7 GiB of RSS at N=100k). Accelerators get
# larger blocks, hence fewer kernel launches.
_CPU_BLOCK_ELEMENTS = 1 << 22  # 16 MiB of float32
_DEVICE_BLOCK_ELEMENTS = 1 << 26  # 256 MiB of float32


def assign_to_centroids(
        embeddings: torch.Tensor,
        centroids: torch.Tensor,
        chunk_size: int = 65536) -> Tuple[torch.Tensor, torch.Tensor]:
    """Cosine-assign unit vectors to their nearest unit centroid.

    The N x K similarity matrix is never built: rows are scored in chunks of
    at most ``chunk_size`` rows, and fewer when K is large, so that a chunk
    holds at most 16 MiB of scores on CPU (256 MiB on an accelerator). The
    chunks are written into one reused buffer, so memory stays bounded for
    millions of embeddings and any K.

    Args:
        embeddings (Tensor): ``(N, D)`` L2-normalised embeddings.
        centroids (Tensor): ``(K, D)`` L2-normalised centroids.
        chunk_size (int): Most rows scored at once. Defaults to 65536.

    Returns:
        Tuple[Tensor, Tensor]: The best centroid index ``(N,)`` (long) and
        its cosine similarity ``(N,)``.
    """
    num, num_k = embeddings.shape[0], centroids.shape[0]
    best_sim = embeddings.new_empty(num)
    best_idx = torch.empty(num, dtype=torch.long, device=embeddings.device)
    budget = (
        _CPU_BLOCK_ELEMENTS
        if embeddings.device.type == 'cpu' else _DEVICE_BLOCK_ELEMENTS)
    rows = max(1, min(chunk_size, budget // max(1, num_k), num))
    # ``out=`` does not support autograd: score differentiable inputs the
    # plain way (no caller needs it, but the function allowed it).
    differentiable = torch.is_grad_enabled() and (embeddings.requires_grad
                                                  or centroids.requires_grad)
    buffer = None if differentiable else embeddings.new_empty(rows, num_k)
    for start in range(0, num, rows):
        chunk = embeddings[start:start + rows]
        if buffer is None:
            sim = chunk @ centroids.t()
        else:
            sim = torch.mm(chunk, centroids.t(), out=buffer[:chunk.shape[0]])
        best_sim[start:start + rows], best_idx[start:start + rows] = sim.max(1)
    return best_idx, best_sim


# Rows converted to fixed point at once by ``segment_sum`` (bounds its
# temporary memory to 64 MiB of int64 at D=128).
_SEGMENT_SUM_ROWS = 1 << 16


def segment_sum(values: torch.Tensor, segments: torch.Tensor,
                num_segments: int) -> torch.Tensor:
    """Sum the rows of ``values`` per segment, exactly and in no particular
    order.

    Float addition is not associative, and CUDA's ``index_add_`` adds with
    atomics in an order that changes from run to run and from rank to rank:
    two ranks summing the same rows can disagree in the last bit. Here each
    value is rounded to a fixed-point grid (2^-40 for up to 2^22 rows; the
    grid coarsens by one bit per doubling of the rows, so that no sum can
    overflow) and the integers are summed in int64, where addition is exact:
    the result is bit-identical whatever the order, on every device. The
    rounding error (<= 2^-41 per value) is far below float32's resolution.
    No host synchronisation.

    Args:
        values (Tensor): ``(N, C)`` values in [-1, 1] (unit embeddings,
            cosine similarities, 0/1 counts).
        segments (Tensor): ``(N,)`` long segment of each row, in
            ``[0, num_segments)``.
        num_segments (int): Number of segments S.

    Returns:
        Tensor: ``(S, C)`` sums, in the dtype of ``values``.
    """
    num = values.shape[0]
    bits = min(40, 62 - max(1, num).bit_length())
    scale = float(2**bits)
    sums = torch.zeros(
        num_segments, values.shape[1], dtype=torch.long, device=values.device)
    for start in range(0, num, _SEGMENT_SUM_ROWS):
        chunk = values[start:start + _SEGMENT_SUM_ROWS]
        sums.index_add_(0, segments[start:start + _SEGMENT_SUM_ROWS],
                        torch.round(chunk.double() * scale).long())
    return (sums.double() / scale).to(values.dtype)


def _gather_seed_pool(embeddings: torch.Tensor, max_pool: int,
                      generator: torch.Generator,
                      distributed: bool) -> torch.Tensor:
    """Collect the candidates for seeding, identical on every rank.

    When the global data fits in ``max_pool`` the pool is the concatenation
    of all shards in rank order, so sharded and single-process runs seed from
    the same points. Otherwise every rank contributes a random subset, drawn
    from a generator of its own: drawing it from the shared ``generator``
    would advance that generator by an amount that depends on the shard's
    size, and the seeds drawn next would differ between ranks whose shards
    differ in size.
    """
    world_size = get_world_size() if distributed else 1
    num_local = torch.tensor([embeddings.shape[0]], device=embeddings.device)
    counts = [num_local] if world_size == 1 else all_gather(num_local)
    counts = [int(c) for c in counts]
    if sum(counts) > max_pool:
        per_rank = max(1, max_pool // world_size)
        # One draw from the shared generator, the same on every rank.
        base = int(torch.randint(2**62, (1, ), generator=generator))
        own = torch.Generator().manual_seed(base + get_rank())
        keep = torch.randperm(embeddings.shape[0], generator=own)[:per_rank]
        embeddings = embeddings[keep.to(embeddings.device)]
        counts = [min(c, per_rank) for c in counts]
    if world_size == 1:
        return embeddings
    # all_gather needs equal shapes: pad to the largest shard, then trim.
    padded = embeddings.new_zeros(max(counts), embeddings.shape[1])
    padded[:embeddings.shape[0]] = embeddings
    gathered = all_gather(padded)
    return torch.cat([g[:c] for g, c in zip(gathered, counts)])


def _seed_centroids(pool: torch.Tensor, num_clusters: int, init: str,
                    generator: torch.Generator) -> torch.Tensor:
    """Pick initial centroids from the pool (random or k-means++)."""
    if init == 'random':
        idx = torch.randperm(pool.shape[0], generator=generator)
        return pool[idx[:num_clusters].to(pool.device)].clone()
    # k-means++ with cosine distance 1 - <x, c>: each new seed is drawn with
    # probability proportional to its squared distance to the nearest seed.
    first = int(torch.randint(pool.shape[0], (1, ), generator=generator))
    centroids = pool.new_empty(num_clusters, pool.shape[1])
    centroids[0] = pool[first]
    min_dist = (1 - pool @ centroids[0]).clamp_(min=0)
    for k in range(1, num_clusters):
        weights = min_dist.square().cpu().double()
        if float(weights.sum()) <= 0:  # fewer distinct points than clusters
            weights = torch.ones_like(weights)
        nxt = int(torch.multinomial(weights, 1, generator=generator))
        centroids[k] = pool[nxt]
        min_dist = torch.minimum(min_dist,
                                 (1 - pool @ centroids[k]).clamp_(min=0))
    return centroids


def spherical_kmeans(embeddings: torch.Tensor,
                     num_clusters: int,
                     num_iters: int = 20,
                     init: str = 'kmeans++',
                     seed: int = 0,
                     max_seed_pool: int = 262144,
                     chunk_size: int = 65536,
                     distributed: bool = True,
                     tol: float = 0.0) -> Tuple[torch.Tensor, dict]:
    """Spherical k-means over embeddings that may be sharded across ranks.

    Every rank passes its own shard; with ``distributed=True`` the per-cluster
    sums and counts are all-reduced, so every rank computes the same
    centroids. The result is finally broadcast from rank 0, which makes it
    bit-identical on every rank whatever the reduction order. Pass
    ``distributed=False`` when every rank already holds the same data (e.g.
    a queue that is identical across ranks).

    Args:
        embeddings (Tensor): ``(N_local, D)`` embeddings (normalised here).
        num_clusters (int): Number of clusters K.
        num_iters (int): Lloyd iterations. Defaults to 20.
        init (str): ``'kmeans++'`` or ``'random'`` seeding. Defaults to
            ``'kmeans++'``.
        seed (int): Seed of the seeding generator, equal on all ranks.
            Defaults to 0.
        max_seed_pool (int): Most candidates considered for seeding.
            Defaults to 262144.
        chunk_size (int): Rows scored at once in the E-step.
            Defaults to 65536.
        distributed (bool): Whether ``embeddings`` is a shard of a larger
            set spread over the ranks. Defaults to True.
        tol (float): Stop when the objective improves by less than this.
            Defaults to 0 (run all iterations).

    Returns:
        Tuple[Tensor, dict]: ``(K, D)`` unit centroids and a dict with the
        final ``objective`` (mean cosine similarity to the assigned
        centroid), ``num_iters`` run, ``num_reseeded`` empty clusters and
        ``num_samples`` (global).
    """
    if init not in ('kmeans++', 'random'):
        raise ValueError(f"init must be 'kmeans++' or 'random', got {init!r}")
    distributed = distributed and get_world_size() > 1
    embeddings = embeddings.float()
    # One NaN row would become a NaN centroid (random seeding: every
    # assignment then fails) or break k-means++'s sampling.
    bad = ~torch.isfinite(embeddings).all(1)
    num_bad = bad.sum()
    if distributed:
        all_reduce(num_bad)
    if int(num_bad):
        rows = bad.nonzero()[:5, 0].tolist()
        raise FloatingPointError(
            f'spherical k-means: {int(num_bad)} of the embeddings to cluster '
            f'hold NaN or inf (e.g. rows {rows} on this rank): the teacher '
            'produced non-finite keys (a diverged teacher: check its loss, '
            'lower the learning rate or add optim_wrapper.clip_grad). The '
            'bank was left as it was.')
    embeddings = F.normalize(embeddings, dim=1)
    num_total = torch.tensor([embeddings.shape[0]], device=embeddings.device)
    if distributed:
        all_reduce(num_total)
    num_total = int(num_total)
    if num_clusters > num_total:
        raise ValueError(
            f'spherical k-means: num_clusters (K={num_clusters}) exceeds the '
            f'{num_total} embeddings available. Lower `num_prototypes` or '
            'initialise the bank later / from the dataset (more embeddings).')

    generator = torch.Generator().manual_seed(seed)
    pool = _gather_seed_pool(embeddings, max_seed_pool, generator, distributed)
    centroids = _seed_centroids(pool, num_clusters, init, generator)
    del pool

    prev_objective = -float('inf')
    num_reseeded = 0
    objective = 0.0
    it = 0
    for it in range(1, num_iters + 1):
        idx, sim = assign_to_centroids(embeddings, centroids, chunk_size)
        if embeddings.device.type == 'cpu':
            # Sequential on CPU: the same sums on every run and rank.
            sums = torch.zeros_like(centroids).index_add_(0, idx, embeddings)
        else:  # atomics elsewhere: sum exactly, whatever the order
            sums = segment_sum(embeddings, idx, num_clusters)
        counts = torch.bincount(idx, minlength=num_clusters).to(sums.dtype)
        # One buffer, one collective: [per-cluster sums | counts | objective].
        stats = sums.new_zeros(num_clusters, sums.shape[1] + 2)
        stats[:, :-2] = sums
        stats[:, -2] = torch.bincount(idx, minlength=num_clusters)
        stats[0, -1] = sim.sum()
        if distributed:
            all_reduce(stats)
        sums, counts, objective = (stats[:, :-2], stats[:, -2],
                                   float(stats[0, -1]) / num_total)
        empty = counts == 0
        centroids = torch.where(empty[:, None], centroids,
                                F.normalize(sums, dim=1))
        if bool(empty.any()):
            # Re-seed each empty cluster with one of the points worst served
            # by its centroid, chosen identically on every rank.
            num_empty = int(empty.sum())
            num_reseeded += num_empty
            centroids[empty] = _farthest_points(embeddings, sim, num_empty,
                                                distributed)
        if tol > 0 and objective - prev_objective < tol:
            break
        prev_objective = objective

    if distributed:
        broadcast(centroids, src=0)
    info = dict(
        objective=objective,
        num_iters=it,
        num_reseeded=num_reseeded,
        num_samples=num_total)
    return centroids, info


def _farthest_points(embeddings: torch.Tensor, sim: torch.Tensor, num: int,
                     distributed: bool) -> torch.Tensor:
    """The ``num`` points with the lowest similarity to their centroid."""
    local_num = min(num, embeddings.shape[0])
    low_sim, low_idx = sim.topk(local_num, largest=False)
    cand = embeddings[low_idx]
    if distributed:
        # Pad to ``num`` rows (sim +inf) so every rank gathers equal shapes.
        pad = num - local_num
        cand = torch.cat([cand, cand.new_zeros(pad, cand.shape[1])])
        low_sim = torch.cat([low_sim, low_sim.new_full((pad, ), float('inf'))])
        cand = torch.cat(all_gather(cand))
        low_sim = torch.cat(all_gather(low_sim))
    order = low_sim.argsort()[:num]
    return cand[order]


def kmeans_objective(embeddings: torch.Tensor,
                     centroids: torch.Tensor,
                     chunk_size: Optional[int] = 65536) -> float:
    """Mean cosine similarity of each embedding to its nearest centroid."""
    _, sim = assign_to_centroids(
        F.normalize(embeddings.float(), dim=1), centroids, chunk_size)
    return float(sim.mean())


# Arguments that RelationMinerHook's kmeans_cfg may pass on.
KMEANS_CFG_KEYS = ('num_iters', 'init', 'seed', 'max_seed_pool', 'chunk_size',
                   'tol')


def check_kmeans_cfg(cfg: dict,
                     where: str = 'RelationMinerHook.kmeans_cfg') -> None:
    """Check ``spherical_kmeans`` arguments when they are written, not when
    clustering starts.

    Args:
        cfg (dict): The arguments.
        where (str): How to name them in messages.
    """
    unknown = sorted(set(cfg) - set(KMEANS_CFG_KEYS))
    if unknown:
        raise TypeError(f'{where} has unknown keys {unknown}; valid keys are '
                        f'{list(KMEANS_CFG_KEYS)}')
    if cfg.get('init', 'kmeans++') not in ('kmeans++', 'random'):
        raise ValueError(f"{where}.init must be 'kmeans++' or 'random', got "
                         f"{cfg['init']!r}")
    for key in ('num_iters', 'max_seed_pool', 'chunk_size'):
        value = cfg.get(key, 1)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(
                f'{where}.{key} must be a positive int, got {value!r}')
    if not isinstance(cfg.get('seed', 0), int):
        raise ValueError(f"{where}.seed must be an int, got {cfg['seed']!r}")
    tol = cfg.get('tol', 0.0)
    if not isinstance(tol, (int, float)) or tol < 0:
        raise ValueError(f'{where}.tol must be a number >= 0, got {tol!r}')
