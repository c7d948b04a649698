# Copyright (c) rekd_mm contributors. All rights reserved.
import torch


def top_k_of_mask(mask: torch.Tensor, scores: torch.Tensor,
                  k: int) -> torch.Tensor:
    """Per row, the ``k`` True entries of ``mask`` with the highest
    ``scores`` (all of them when the row has fewer).

    The selection rule behind the cap on mined positives (the most similar
    ones), the sampled oracle (random scores) and the nearest-slot rules of
    ``benchmarks/relation_selection.py``.

    Args:
        mask (Tensor): ``(N, L)`` bool candidates.
        scores (Tensor): ``(N, L)`` finite scores.
        k (int): Entries to keep per row, >= 0.

    Returns:
        Tensor: ``(N, L)`` bool mask, a subset of ``mask``.
    """
    keep = torch.zeros_like(mask)
    k = min(int(k), mask.shape[1])
    if k == 0:
        return keep
    masked = scores.float().masked_fill(~mask, float('-inf'))
    top_score, top_idx = masked.topk(k, dim=1)
    # Rows with fewer than k candidates pick some -inf entries: drop them.
    keep.scatter_(1, top_idx, top_score > float('-inf'))
    return keep
