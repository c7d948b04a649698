# Copyright (c) rekd_mm contributors. All rights reserved.
import itertools
import math

import torch

from rekd_mm.evaluation import pairwise_relation_scores, prototype_summary


def _brute_force(assign, labels):
    same_proto = same_label = both = 0
    for i, j in itertools.combinations(range(len(assign)), 2):
        if labels[i] < 0 or labels[j] < 0:
            continue
        proto = assign[i] >= 0 and assign[i] == assign[j]
        label = labels[i] == labels[j]
        same_proto += proto
        same_label += label
        both += proto and label
    return same_proto, same_label, both


def test__pairwise_scores_equal_the_pair_count():
    g = torch.Generator().manual_seed(0)
    assign = torch.randint(-1, 5, (60, ), generator=g)  # -1: unassigned
    labels = torch.randint(-1, 4, (60, ), generator=g)  # -1: no label
    scores = pairwise_relation_scores(assign, labels)
    same_proto, same_label, both = _brute_force(assign.tolist(),
                                                labels.tolist())
    assert scores['pairs_same_prototype'] == same_proto
    assert scores['pairs_same_label'] == same_label
    assert scores['pairs_both'] == both
    assert math.isclose(scores['relation_precision'], both / same_proto)
    assert math.isclose(scores['relation_recall'], both / same_label)


def test__pure_prototypes_have_precision_one_and_split_classes_lose_recall():
    # Class 0 split over prototypes 0 and 1, class 1 in prototype 2.
    assign = torch.tensor([0, 0, 1, 1, 2, 2, 2])
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 1])
    scores = pairwise_relation_scores(assign, labels)
    assert scores['relation_precision'] == 1.0
    # Same-label pairs: C(4,2) + C(3,2) = 9, of which 1 + 1 + 3 share one.
    assert scores['relation_recall'] == 5 / 9
    # Nothing assigned: no relation, precision undefined, recall 0.
    none = pairwise_relation_scores(torch.full((7, ), -1), labels)
    assert math.isnan(none['relation_precision'])
    assert none['relation_recall'] == 0.0


def test__summary_orders_prototypes_by_usage_with_majority_and_purity():
    assign = torch.tensor([3, 3, 3, 1, 1, -1, 0])
    labels = torch.tensor([2, 2, 5, 4, 4, 2, -1])
    rows = prototype_summary(assign, labels, num_prototypes=5)
    assert [r['prototype'] for r in rows] == [3, 1, 0]
    assert [r['count'] for r in rows] == [3, 2, 1]
    assert rows[0]['majority_label'] == 2
    assert math.isclose(rows[0]['purity'], 2 / 3)
    assert rows[1]['purity'] == 1.0
    assert rows[2]['majority_label'] == -1 and math.isnan(rows[2]['purity'])
