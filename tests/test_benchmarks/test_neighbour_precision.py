# Copyright (c) rekd_mm contributors. All rights reserved.
"""benchmarks/neighbour_precision.py: precision against a hand computation,
and every feature space of a toy ReKD checkpoint scored end to end."""
import json
import os.path as osp

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmpretrain.registry import MODELS

from tests.scripts import load_script
from tests.toy_configs import REPO_ROOT, toy_knn_loader_cfg, toy_model_cfg

SCRIPT = osp.join(REPO_ROOT, 'benchmarks', 'neighbour_precision.py')


@pytest.fixture(scope='module')
def bench():
    return load_script(SCRIPT)


def test__precision_against_a_hand_computation(bench):
    # Two tight pairs on the axes, labels [0, 0 | 0, 1]: the nearest other
    # sample is the pair partner, so precision @1 = (1 + 1 + 0 + 0) / 4.
    # The second nearest of every sample lies on the other axis, at
    # similarity 0 to both: ties broken by topk, so only @1 and @3 (all
    # others) are closed forms.
    feats = torch.tensor([[1., 0.01], [1., -0.01], [0.01, 1.], [-0.01, 1.]])
    labels = torch.tensor([0, 0, 0, 1])
    got = bench.neighbour_precision(feats, labels, [1, 3], centre=False)
    assert got[1] == pytest.approx(0.5)
    # Every other sample: agreeing ordered pairs 3·2 of 12.
    assert got[3] == pytest.approx(6 / 12)


def test__centring_removes_a_shared_offset(bench):
    # Clusters at x = ±1, spread ±0.2 in y. Shifted by 100 along x, every
    # direction is nearly (1, 0) and cosine ranks by y / x alone: each
    # sample's nearest is the other cluster's sample with its own sign of
    # y. Centred, the shift is gone and the clusters separate exactly.
    feats = torch.tensor([[1., 0.2], [1., -0.2], [-1., 0.2], [-1., -0.2]])
    labels = torch.tensor([0, 0, 1, 1])
    shifted = feats + torch.tensor([100., 0.])
    assert bench.neighbour_precision(shifted, labels, [1], False)[1] == 0.0
    assert bench.neighbour_precision(shifted, labels, [1], True)[1] == 1.0


def _toy_config(tmp_path, feat_dim=16):
    cfg = Config(
        dict(
            default_scope='mmpretrain',
            model=toy_model_cfg(feat_dim=feat_dim),
            knn_train_dataloader=toy_knn_loader_cfg('train', 24)))
    path = str(tmp_path / f'toy_{feat_dim}.py')
    cfg.dump(path)
    return path


def _toy_checkpoint(tmp_path, feat_dim=16):
    init_default_scope('mmpretrain')
    torch.manual_seed(0)
    model = MODELS.build(toy_model_cfg(feat_dim=feat_dim))
    path = str(tmp_path / f'toy_{feat_dim}.pth')
    torch.save({'state_dict': model.state_dict(), 'meta': {}}, path)
    return path


def test__every_space_of_a_rekd_checkpoint(bench, tmp_path):
    import rekd_mm  # noqa: F401
    out = tmp_path / 'np.json'
    results = bench.main([
        _toy_config(tmp_path),
        _toy_checkpoint(tmp_path), '--num-images', '16', '--neighbours', '1',
        '3', '--out',
        str(out)
    ])
    rows = {(r['space'], r['centred']): r for r in results['rows']}
    spaces = ('pixels', 'student backbone', 'student neck', 'teacher backbone',
              'teacher neck')
    assert set(rows) == {(s, c) for s in spaces for c in (False, True)}
    # Fashion-MNIST at 16 px, grey copied to 3 channels; the toy necks'
    # width; the toy teacher's last stage (8 × base 16).
    assert rows[('pixels', False)]['dim'] == 3 * 16 * 16
    assert rows[('student neck', True)]['dim'] == 16
    assert rows[('teacher neck', True)]['dim'] == 16
    assert rows[('teacher backbone', False)]['dim'] == 128
    for row in results['rows']:
        assert set(row['precision']) == {1, 3}
        assert all(0 <= p <= 1 for p in row['precision'].values())
    assert results['settings']['num_images'] == 16
    assert 0 < results['chance'] < 1
    written = json.loads(out.read_text())
    assert written['rows'][0]['precision']['1'] == \
        results['rows'][0]['precision'][1]
    md = (tmp_path / 'np.md').read_text()
    assert '| teacher neck | yes | 16 |' in md


def test__a_checkpoint_of_another_model_is_refused(bench, tmp_path):
    import rekd_mm  # noqa: F401
    with pytest.raises(ValueError, match=r'toy_32\.pth.*does not fit'):
        bench.main([
            _toy_config(tmp_path, feat_dim=16),
            _toy_checkpoint(tmp_path, feat_dim=32), '--num-images', '8',
            '--neighbours', '1'
        ])
