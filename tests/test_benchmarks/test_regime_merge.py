# Copyright (c) rekd_mm contributors. All rights reserved.
"""benchmarks/regime_merge.py: arms of several searches in one table and
plot, each with its own config; incomparable searches refused."""
import json
import os.path as osp

import pytest

from tests.scripts import load_script
from tests.toy_configs import REPO_ROOT

SCRIPT = osp.join(REPO_ROOT, 'benchmarks', 'regime_merge.py')
SETTINGS = dict(
    dataset='cifar10',
    iters=4,
    seed=0,
    knn_interval=2,
    knn_max_train=10,
    knn_max_val=5,
    knn_k=3)


@pytest.fixture(scope='module')
def merge():
    return load_script(SCRIPT)


def _search(path, config, arm, student, settings=SETTINGS):
    curves = {
        'knn/student_top1': [[0, 10.0], [2, student], [4, student + 1]],
        'knn/teacher_top1': [],
        'loss': [[4, 7.5]]
    }
    path.write_text(
        json.dumps(
            dict(
                settings=settings,
                config=config,
                machine={},
                commands=[f'python regime_search.py --arm {arm}'],
                arms={
                    arm:
                    dict(
                        options=['x=1'],
                        command='',
                        wall_s=60.0,
                        resumed=False,
                        curves=curves)
                })))
    return str(path)


def test__arms_of_two_configs_share_one_table(merge, tmp_path):
    moco = _search(tmp_path / 'a.json', 'configs/mocov2_x.py', 'moco', 20.0)
    rekd = _search(tmp_path / 'b.json', 'configs/rekd_x.py', 'rekd', 25.0)
    out = tmp_path / 'merged.json'
    merged = merge.main([moco, rekd, '--out', str(out)])
    assert list(merged['arms']) == ['moco', 'rekd']
    assert merged['arms']['rekd']['config'] == 'configs/rekd_x.py'
    assert len(merged['commands']) == 2
    md = (tmp_path / 'merged.md').read_text()
    assert '| rekd | `rekd_x.py` | x=1 | 10.00 | 25.00 | 26.00 |' in md
    assert '| moco | `mocov2_x.py` | x=1 | 10.00 | 20.00 | 21.00 |' in md
    assert (tmp_path / 'merged.png').stat().st_size > 0
    assert json.loads(out.read_text())['sources'] == [moco, rekd]


def test__other_settings_or_a_shared_arm_are_refused(merge, tmp_path):
    moco = _search(tmp_path / 'a.json', 'configs/mocov2_x.py', 'moco', 20.0)
    longer = _search(tmp_path / 'b.json', 'configs/rekd_x.py', 'rekd', 25.0,
                     dict(SETTINGS, iters=8))
    with pytest.raises(SystemExit, match='other settings'):
        merge.main([moco, longer, '--out', str(tmp_path / 'm.json')])
    again = _search(tmp_path / 'c.json', 'configs/rekd_x.py', 'moco', 25.0)
    with pytest.raises(SystemExit, match="arm 'moco' is in both"):
        merge.main([moco, again, '--out', str(tmp_path / 'm.json')])
    assert not (tmp_path / 'm.json').exists()
