# Copyright (c) rekd_mm contributors. All rights reserved.
from typing import Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .spherical_kmeans import (assign_to_centroids, segment_sum,
                               spherical_kmeans)


class PrototypeBank(nn.Module):
    """The relation miner's prototype bank in the teacher's embedding space.

    Its dimension is the teacher's (ReKD's ``teacher_feat_dim``), which may
    differ from the student's: the bank only ever sees teacher keys, and a
    key of another width is refused with the dimension named, never
    broadcast or truncated.

    All state is kept in buffers (``prototypes``, ``initialized`` and
    ``last_cluster_iter``) so that checkpoints and ``--resume`` restore it and
    a restored bank is never initialised again.

    Connection step (:meth:`assign`): an embedding ``e`` is assigned to
    ``argmax_k <e, p_k>`` when that similarity reaches ``threshold`` (Θ),
    else to ``-1`` (unassigned).

    Update step (:meth:`update`): for each prototype with assigned anchors
    ``z_i`` and similarities ``s_i``::

        a_k = sum(s_i z_i) / sum(s_i)
        m_k = 1 - (1 - momentum) * mean(s_i)
        p_k <- normalise(m_k p_k + (1 - m_k) a_k)

    Unlike mmengine's EMA convention, ``momentum`` (m0) here is the weight of
    the OLD prototype, as in the method's equations: confident anchors (high
    ``s_i``) move a prototype more. Negative similarities (possible when
    Θ < 0) are clamped to 0 in the weights.

    The update is only ever called with keys that were all-gathered across
    ranks, and its result does not depend on the order of accumulation, so
    every rank applies the bit-identical update to the same bank without an
    extra collective (mmengine wraps DDP with ``broadcast_buffers=False``).
    ReKD also broadcasts rank 0's bank after every clustering and at every
    refresh of the queue's cached assignments.

    Args:
        num_prototypes (int): Number of prototypes K.
        feat_dim (int): Embedding dimension D_t of the teacher's (mining)
            space; ReKD passes ``model.teacher_feat_dim``. Defaults to 128.
        threshold (float): Assignment threshold Θ in [-1, 1].
            Defaults to 0.5.
        momentum (float): Base momentum m0 in [0, 1). Defaults to 0.99.
    """

    def __init__(self,
                 num_prototypes: int,
                 feat_dim: int = 128,
                 threshold: float = 0.5,
                 momentum: float = 0.99,
                 **unknown) -> None:
        super().__init__()
        if unknown:
            # ReKD passes model.miner here, minus its own options.
            raise TypeError(
                f'model.miner has unknown keys {sorted(unknown)}; valid keys '
                "are the bank's ['momentum', 'num_prototypes', 'threshold'] "
                "and ReKD's own miner options (see ReKD's docstring, e.g. "
                "'queue_refresh_interval', 'center')")
        if not isinstance(num_prototypes, int) or num_prototypes < 1:
            raise ValueError('model.miner.num_prototypes must be a positive '
                             f'int, got {num_prototypes!r}')
        if not -1.0 <= float(threshold) <= 1.0:
            raise ValueError(
                f'model.miner.threshold (Θ) must lie in [-1, 1] because it '
                f'is compared with cosine similarities, got {threshold}')
        if not 0.0 <= float(momentum) < 1.0:
            raise ValueError('model.miner.momentum (m0) must lie in [0, 1), '
                             f'got {momentum}')
        self.num_prototypes = num_prototypes
        self.feat_dim = feat_dim
        self.threshold = float(threshold)
        self.momentum = float(momentum)
        self.register_buffer('prototypes', torch.zeros(num_prototypes,
                                                       feat_dim))
        self.register_buffer('initialized', torch.zeros((), dtype=torch.bool))
        # Training iteration of the last (re-)clustering, -1 before any.
        self.register_buffer('last_cluster_iter',
                             torch.full((), -1, dtype=torch.long))
        # Updates skipped because their keys held NaN or inf; read (and
        # reported) by ReKD with its one host read of the next step. Not
        # checkpointed: a run stops at the first one.
        self.register_buffer(
            'nonfinite_updates',
            torch.zeros((), dtype=torch.long),
            persistent=False)

    def _check_dim(self, embeddings: torch.Tensor, where: str) -> None:
        """Refuse embeddings that are not ``(N, feat_dim)`` (a host-side
        shape check: no synchronisation)."""
        if embeddings.dim() != 2 or embeddings.shape[1] != self.feat_dim:
            raise ValueError(
                f'PrototypeBank.{where}: got embeddings of shape '
                f'{tuple(embeddings.shape)}, but the bank holds '
                f'{self.feat_dim}-d prototypes (the teacher\'s dimension, '
                'model.teacher_feat_dim): the embeddings must be teacher '
                'keys of that width.')

    @property
    def is_initialized(self) -> bool:
        """bool: Whether the bank holds clustered prototypes."""
        return bool(self.initialized)

    @torch.no_grad()
    def assign(self,
               embeddings: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Connection step: map embeddings to prototypes, or -1.

        Args:
            embeddings (Tensor): ``(N, D_t)`` L2-normalised embeddings.

        Returns:
            Tuple[Tensor, Tensor]: The assignment ``(N,)`` (long, -1 when the
            best similarity is below Θ) and the best similarity ``(N,)``.
        """
        self._check_dim(embeddings, 'assign')
        idx, sim = assign_to_centroids(embeddings.float(), self.prototypes)
        idx = torch.where(sim >= self.threshold, idx, torch.full_like(idx, -1))
        return idx, sim

    @torch.no_grad()
    def update(self, embeddings: torch.Tensor, assignment: torch.Tensor,
               similarity: torch.Tensor) -> None:
        """Update step: move each prototype towards its assigned anchors.

        Exact and without host synchronisation: the per-prototype sums
        ``Σ s_i z_i``, ``Σ s_i`` and the counts are accumulated as fixed-point
        integers (:func:`segment_sum`), so they do not depend on the order in
        which the device adds them up (CUDA's ``index_add_`` on floats uses
        atomics: an order, and so a last bit, that differs from rank to rank
        and would make the banks drift apart). Unassigned anchors go to a
        discarded extra segment instead of being masked out (boolean
        indexing and ``bincount`` read sizes on the host).

        A batch whose keys hold NaN or inf leaves the bank unchanged and is
        counted in ``nonfinite_updates``; ``ReKD`` raises at its next step.

        Args:
            embeddings (Tensor): ``(N, D_t)`` anchors, identical on all
                ranks.
            assignment (Tensor): ``(N,)`` from :meth:`assign`.
            similarity (Tensor): ``(N,)`` from :meth:`assign`.
        """
        self._check_dim(embeddings, 'update')
        num_k = self.num_prototypes
        emb = embeddings.float()
        finite = torch.isfinite(emb).all()
        valid = (assignment >= 0) & finite
        weight = torch.where(valid, similarity.float().clamp(min=0), 0.0)
        emb = torch.where(valid[:, None], emb, 0.0)
        columns = torch.cat(
            [weight[:, None] * emb, weight[:, None], valid[:, None].float()],
            dim=1)
        sums = segment_sum(columns, torch.where(valid, assignment, num_k),
                           num_k + 1)[:num_k]
        weighted, weight_sum, counts = sums[:, :-2], sums[:, -2], sums[:, -1]
        moved = weight_sum > 0
        target = weighted / weight_sum.clamp(min=1e-12)[:, None]
        mean_sim = weight_sum / counts.clamp(min=1)
        m_k = 1 - (1 - self.momentum) * mean_sim
        new = F.normalize(
            m_k[:, None] * self.prototypes + (1 - m_k[:, None]) * target,
            dim=1)
        self.prototypes.copy_(
            torch.where(moved[:, None], new, self.prototypes))
        self.nonfinite_updates.add_((~finite).long())

    @torch.no_grad()
    def initialize(self,
                   embeddings: torch.Tensor,
                   current_iter: int = 0,
                   distributed: bool = True,
                   **kmeans_kwargs) -> dict:
        """Cluster embeddings with spherical k-means and load the centroids.

        Args:
            embeddings (Tensor): ``(N_local, D_t)`` teacher embeddings; a
                shard per rank when ``distributed`` is True.
            current_iter (int): The training iteration, recorded in
                ``last_cluster_iter``. Defaults to 0.
            distributed (bool): See :func:`spherical_kmeans`.
            **kmeans_kwargs: Passed to :func:`spherical_kmeans`.

        Returns:
            dict: The k-means information.
        """
        self._check_dim(embeddings, 'initialize')
        centroids, info = spherical_kmeans(
            embeddings.to(self.prototypes.device),
            self.num_prototypes,
            distributed=distributed,
            **kmeans_kwargs)
        finite = torch.isfinite(centroids).all(1)
        nonzero = centroids.abs().sum(1) > 0
        if not bool((finite & nonzero).all()):
            raise FloatingPointError(
                f'PrototypeBank.initialize: k-means returned '
                f'{int((~(finite & nonzero)).sum())} zero or non-finite '
                'prototypes; the bank stays uninitialised.')
        self.prototypes.copy_(centroids)
        self.initialized.fill_(True)
        self.last_cluster_iter.fill_(current_iter)
        return info

    def extra_repr(self) -> str:
        return (f'num_prototypes={self.num_prototypes}, '
                f'feat_dim={self.feat_dim}, threshold={self.threshold}, '
                f'momentum={self.momentum}')


def count_used(assignment: torch.Tensor, num_prototypes: int) -> torch.Tensor:
    """Number of distinct prototypes holding at least one assignment (no
    host synchronisation: unassigned entries mark an extra slot)."""
    used = torch.zeros(
        num_prototypes + 1, dtype=torch.bool, device=assignment.device)
    used.index_fill_(0, assignment.clamp(min=-1) + 1, True)
    return used[1:].sum().float()
