# Copyright (c) rekd_mm contributors. All rights reserved.
"""benchmarks/relation_selection.py on a hand-made queue whose relation
precisions are known in closed form."""
import json
import os.path as osp

import pytest
import torch
import torch.nn.functional as F

from tests.scripts import load_script
from tests.toy_configs import REPO_ROOT

SCRIPT = osp.join(REPO_ROOT, 'benchmarks', 'relation_selection.py')


@pytest.fixture(scope='module')
def selection():
    return load_script(SCRIPT)


def _checkpoint(path, initialized=True, with_labels=True):
    """Two tight clusters of 4 slots around e0 and e1 (+ 2 unwritten slots).
    Slot 3 sits in cluster e0 but is labelled 1: cluster e0 holds labels
    [0, 0, 0, 1], cluster e1 holds [1, 1, 1, 1]."""
    gen = torch.Generator().manual_seed(0)
    centres = torch.eye(4)[:2]
    keys = centres.repeat_interleave(4, 0) + 0.01 * torch.randn(
        8, 4, generator=gen)
    keys = F.normalize(keys, dim=1)
    queue = torch.zeros(4, 10)
    queue[:, :8] = keys.t()
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 1, 1, -1, -1])
    state = {
        'teacher_queue': queue,
        'mining_queue': queue,
        'queue_count': torch.tensor(8),
        'miner.prototypes': centres,
        'miner.initialized': torch.tensor(initialized),
    }
    if with_labels:
        state['queue_labels'] = labels
    torch.save({'state_dict': state, 'meta': {}}, path)
    return str(path)


def test__precisions_match_the_closed_form(selection, tmp_path):
    ckpt = _checkpoint(tmp_path / 'iter_8.pth')
    out = tmp_path / 'sel.json'
    results = selection.main([
        '--run', 'toy', ckpt, '--num-prototypes', '2', '--caps', '1',
        '--thresholds', '1.0', '--nearest', '3', '--out',
        str(out)
    ])
    rows = {r['rule']: r for r in results['runs']['toy']['rows']}
    # Same prototype: each cluster has C(4,2) = 6 pairs, 12 ordered pairs
    # per cluster; agreeing ordered pairs: 3·2 in cluster e0, 4·3 in e1.
    bank = rows['bank (K = 2, Θ = 0.5)']
    assert bank['precision'] == pytest.approx((6 + 12) / 24)
    assert bank['positives_per_anchor'] == 3 and bank['coverage'] == 1
    # Re-clustering into K = 2 finds the same two clusters.
    assert rows['K = 2 (re-clustered)']['precision'] == pytest.approx(18 / 24)
    # The 3 nearest slots are the anchor's cluster: the same relations.
    assert rows['nearest 3']['precision'] == pytest.approx(18 / 24)
    # Chance: agreeing ordered pairs among all 8·7: 3·2 + 5·4 = 26.
    assert rows['chance (every other slot)']['precision'] == pytest.approx(26 /
                                                                           56)
    assert rows['bank + cap 1']['positives_per_anchor'] == 1
    # Θ = 1 leaves the perturbed keys unassigned: no relation, no anchor.
    strict = rows['bank, Θ = 1']
    assert strict['positives_per_anchor'] == 0 and strict['coverage'] == 0
    assert strict['precision'] is None
    written = json.loads(out.read_text())
    assert written['runs']['toy']['slots'] == 8
    assert osp.exists(tmp_path / 'sel.md')


def test__wrong_pairs_match_a_hand_count(selection):
    # Six slots, two per class. Relations (both directions): 0-2 and 1-3
    # join classes 0 and 1 (wrong), 0-4 joins 0 and 2 (wrong), 4-5 is right.
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    relations = torch.zeros(6, 6, dtype=torch.bool)
    for i, j in ((0, 2), (1, 3), (0, 4), (4, 5)):
        relations[i, j] = relations[j, i] = True
    confusion = selection.wrong_pairs(relations, labels, top=2)
    assert confusion['wrong'] == 6
    first, second = confusion['pairs']
    # Every class pair has 2 * 2 * 2 = 8 of the 24 different-class ordered
    # slot pairs: a chance share of 1/3 each.
    assert first['classes'] == [0, 1] and second['classes'] == [0, 2]
    assert first['share'] == pytest.approx(4 / 6)
    assert second['share'] == pytest.approx(2 / 6)
    assert first['chance_share'] == pytest.approx(1 / 3)
    assert first['enrichment'] == pytest.approx(2.0)
    assert second['enrichment'] == pytest.approx(1.0)
    assert confusion['top_share'] == pytest.approx(1.0)
    assert confusion['top_chance_share'] == pytest.approx(2 / 3)


def test__wrong_pairs_table_names_the_classes(selection, tmp_path):
    ckpt = _checkpoint(tmp_path / 'iter_8.pth')
    out = tmp_path / 'sel.json'
    results = selection.main([
        '--run', 'toy', ckpt, '--num-prototypes', '2', '--class-names',
        'cifar10', '--out',
        str(out)
    ])
    # Slot 3 (class 1) shares cluster e0 with three slots of class 0: the
    # bank's only wrong relations, 3 pairs in both directions.
    confusion = results['runs']['toy']['wrong_pairs']
    assert confusion['wrong'] == 6
    assert confusion['pairs'][0]['classes'] == [0, 1]
    assert confusion['pairs'][0]['share'] == pytest.approx(1.0)
    assert 'airplane – automobile' in (tmp_path / 'sel.md').read_text()


def test__uninitialised_bank_and_missing_labels_are_refused(
        selection, tmp_path):
    with pytest.raises(ValueError, match='never initialised'):
        selection.main(
            ['--run', 'x',
             _checkpoint(tmp_path / 'a.pth', initialized=False)])
    with pytest.raises(KeyError, match='queue_labels'):
        selection.main(
            ['--run', 'x',
             _checkpoint(tmp_path / 'b.pth', with_labels=False)])
