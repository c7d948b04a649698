# Copyright (c) rekd_mm contributors. All rights reserved.
import json
import math
import os.path as osp

import pytest

from tests.scripts import load_script
from tests.toy_configs import REPO_ROOT

SCRIPT = osp.join(REPO_ROOT, 'benchmarks', 'quality_summary.py')


@pytest.fixture(scope='module')
def summary_mod():
    return load_script(SCRIPT)


def _result(seed, knn, iters=2000):
    return dict(
        settings=dict(regime='small', iters=iters, seed=seed),
        records=[
            dict(
                dataset='cifar10',
                variant=v,
                student_knn_top1=k,
                student_probe_top1=k + 1,
                train_wall_s=10.0,
                train_loop_s=6.0 * k) for v, k in knn.items()
        ])


def test__mean_std_and_target_against_a_hand_computation(
        summary_mod, tmp_path):
    files = [
        _result(0, dict(mocov2=50.0, rekd=55.0)),
        _result(1, dict(mocov2=52.0, rekd=54.0)),
        _result(2, dict(mocov2=51.0, rekd=56.0)),
    ]
    paths = []
    for i, res in enumerate(files):
        path = tmp_path / f'seed{i}.json'
        path.write_text(json.dumps(res))
        paths.append(str(path))
    out = tmp_path / 'summary.json'
    summary = summary_mod.main(paths + ['--out', str(out)])
    rows = {r['variant']: r for r in summary['rows']}
    assert rows['mocov2']['student_knn_top1'] == dict(mean=51.0, std=1.0, n=3)
    assert rows['rekd']['student_knn_top1'] == dict(mean=55.0, std=1.0, n=3)
    delta = rows['rekd']['delta_student_knn_top1']
    # Pooled std of two groups with std 1: 1; Δ = 4 ≥ 3 and > 2.
    assert delta['delta'] == 4.0 and math.isclose(delta['two_pooled_std'], 2)
    assert delta['target_met']
    md = (tmp_path / 'summary.md').read_text()
    assert '55.00 ± 1.00 (n=3)' in md and '+4.00 (2.00) ✓' in md
    # Loop time in minutes: 6 s per kNN point, i.e. 0.1 × the kNN mean.
    assert '5.5 ± 0.1 (n=3)' in md
    assert (tmp_path / 'summary.png').read_bytes()[:4] == b'\x89PNG'


def test__a_noisy_gain_misses_the_target(summary_mod):
    summary = summary_mod.summarise([
        _result(0, dict(mocov2=50.0, rekd=58.0)),
        _result(1, dict(mocov2=54.0, rekd=54.0)),
    ])
    rows = {r['variant']: r for r in summary['rows']}
    delta = rows['rekd']['delta_student_knn_top1']
    # Δ = 4 but the pooled std is sqrt(8): 2·2.83 > 4.
    assert delta['delta'] == 4.0 and not delta['target_met']


def test__one_seed_has_no_spread_and_never_meets_the_target(
        summary_mod, tmp_path):
    paths = []
    for seed, knn in ((0, dict(mocov2=50.0, rekd=60.0)), (1, dict(rekd=62.0))):
        path = tmp_path / f'seed{seed}.json'
        path.write_text(json.dumps(_result(seed, knn)))
        paths.append(str(path))
    out = tmp_path / 'summary.json'
    summary = summary_mod.main(paths + ['--out', str(out)])
    rows = {r['variant']: r for r in summary['rows']}
    # The std of one value is undefined, not 0.
    assert rows['mocov2']['student_knn_top1'] == dict(mean=50.0, std=None, n=1)
    delta = rows['rekd']['delta_student_knn_top1']
    # Two values in all on the ReKD side, one on MoCo v2's: dof = 1, and
    # only ReKD's two seeds contribute (61 ± sqrt(2)): pooled std sqrt(2).
    assert delta['delta'] == 11.0
    assert math.isclose(delta['two_pooled_std'], 2 * math.sqrt(2))
    # Δ = 11 > 2.83 but MoCo v2 has a single seed: not met.
    assert not delta['target_met']
    md = (tmp_path / 'summary.md').read_text()
    assert '| 50.00 (n=1) |' in md and '± 0.00' not in md
    assert '+11.00 (2.83) |' in md
    # With one seed on each side there is no spread at all.
    single = summary_mod.summarise([_result(0, dict(mocov2=50.0, rekd=60.0))])
    delta = {r['variant']: r
             for r in single['rows']}['rekd']['delta_student_knn_top1']
    assert delta['two_pooled_std'] is None and not delta['target_met']
    assert '+10.00 (no spread yet)' in summary_mod.build_markdown(
        single, 'cmd', [])
    assert (tmp_path / 'summary.png').read_bytes()[:4] == b'\x89PNG'


def test__mixed_budgets_and_duplicate_seeds_are_refused(summary_mod):
    with pytest.raises(ValueError, match='mix regimes'):
        summary_mod.summarise([
            _result(0, dict(mocov2=1.0)),
            _result(1, dict(mocov2=1.0), iters=10)
        ])
    with pytest.raises(ValueError, match='seed 0 appears twice'):
        summary_mod.summarise(
            [_result(0, dict(mocov2=1.0)),
             _result(0, dict(mocov2=1.0))])
