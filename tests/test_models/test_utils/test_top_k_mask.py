# Copyright (c) rekd_mm contributors. All rights reserved.
import torch

from rekd_mm.models.utils import top_k_of_mask

MASK = torch.tensor([[True, False, True, True], [False, True, False, False],
                     [False] * 4])
SCORES = torch.tensor([[0.2, 0.9, 0.7, 0.5], [0.1, 0.3, 0.8, 0.0],
                       [0.4, 0.3, 0.2, 0.1]])


def test__keeps_the_highest_scoring_candidates_only():
    keep = top_k_of_mask(MASK, SCORES, 2)
    # Row 0: 0.7 and 0.5 (never the higher-scoring non-candidate 0.9); row 1
    # has one candidate; row 2 none.
    assert keep.tolist() == [[False, False, True, True],
                             [False, True, False, False], [False] * 4]


def test__zero_and_more_than_the_row():
    assert not top_k_of_mask(MASK, SCORES, 0).any()
    assert torch.equal(top_k_of_mask(MASK, SCORES, 10), MASK)
