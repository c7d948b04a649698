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


def _record(variant, student, teacher, dataset='cifar10'):
    return dict(
        dataset=dataset,
        variant=variant,
        student_knn_top1=student,
        student_probe_top1=student + 2.0,
        teacher_knn_top1=teacher)


def test__relation_effects_pair_each_rekd_run_with_its_run_without_relations(
        summary_mod, tmp_path):
    # (with relations, without) by seed; the teachers agree in seed 0 and
    # differ in seed 1 (another thread count).
    runs = {
        0:
        dict(
            rekd_kd4=(43.0, 45.0),
            rekd_no_relation_kd4=(44.0, 45.0),
            rekd_oracle_kd4=(47.0, 45.0),
            rekd_no_relation_kd1=(42.0, 44.0),
            rekd_offline_kd4=(46.0, 50.0),
            mocov2=(40.0, None)),
        1:
        dict(rekd_kd4=(42.5, 44.0), rekd_no_relation_kd4=(42.0, 43.0)),
    }
    paths = []
    for seed, variants in runs.items():
        path = tmp_path / f'seed{seed}.json'
        path.write_text(
            json.dumps(
                dict(
                    settings=dict(regime='small', iters=10, seed=seed),
                    records=[
                        _record(v, s, t) for v, (s, t) in variants.items()
                    ])))
        paths.append(str(path))
    summary = summary_mod.main(paths + ['--out', str(tmp_path / 's.json')])
    effects = {e['with']: e for e in summary['relation_effects']}
    # MoCo v2, the runs without relations and the offline teacher have no
    # partner; the oracle's is the run without relations of its KD weight,
    # not that of weight 1.
    assert set(effects) == {'rekd_kd4', 'rekd_oracle_kd4'}
    kd4 = effects['rekd_kd4']
    assert kd4['without'] == 'rekd_no_relation_kd4'
    assert kd4['seeds'] == [0, 1] and kd4['knn_by_seed'] == [-1.0, 0.5]
    # Student differences -1.0 and +0.5: mean -0.25, std sqrt(1.125).
    assert math.isclose(kd4['knn']['mean'], -0.25)
    assert math.isclose(kd4['knn']['std'], math.sqrt(1.125))
    # Gap to the teacher: seed 0 (-2) - (-1) = -1; seed 1 (-1.5) - (-1) =
    # -0.5.
    assert math.isclose(kd4['gap']['mean'], -0.75)
    assert kd4['same_teacher'] == [0]
    oracle = effects['rekd_oracle_kd4']
    assert oracle['without'] == 'rekd_no_relation_kd4'
    assert oracle['seeds'] == [0] and oracle['knn'] == dict(
        mean=3.0, std=None, n=1)
    md = (tmp_path / 's.md').read_text()
    assert (
        '| cifar10 | rekd_kd4 | rekd_no_relation_kd4 | 0, 1 | -1.00, +0.50 '
        '| -0.25 ± 1.06 (n=2) |') in md
    assert '| +3.00 (n=1) | +3.00 (n=1) | +3.00 (n=1) | 0 |' in md


def test__no_run_without_relations_no_relation_table(summary_mod):
    summary = summary_mod.summarise([_result(0, dict(mocov2=1.0, rekd=2.0))])
    assert summary['relation_effects'] == []
    assert "relations' effect" not in summary_mod.build_markdown(
        summary, 'cmd', [])


def test__plot_colours_tell_every_row_apart(summary_mod):
    # The final comparison's figure has 13 rows; the default colour cycle
    # wraps after ten, which drew `pixels` and `supervised` alike.
    colours = summary_mod.variant_colours
    names = [f'arm{i:02d}' for i in range(13)]
    many = colours(names + names[:3])  # repeats are fine
    assert sorted(many) == names
    assert len(set(many.values())) == 13
    # A name keeps its colour whatever the order the rows come in.
    assert colours(reversed(names)) == many
    # Up to ten rows keep matplotlib's default cycle.
    assert colours(['b', 'a']) == {'a': 'C0', 'b': 'C1'}
    with pytest.raises(ValueError, match='21 variants'):
        colours(f'v{i}' for i in range(21))
