# Copyright (c) rekd_mm contributors. All rights reserved.
"""The final comparison of the quality benchmark: mean ± std over seeds.

Reads the per-seed result files of ``benchmarks/quality.py`` (one JSON per
data set and seed, same regime and budget) and writes, per data set and
variant, the mean and sample standard deviation of the student's kNN top-1
and linear-probe top-1, the teacher's, and the training loop's time; the
difference of every variant to MoCo v2 with twice the pooled standard
deviation, and whether the issue's target holds (Δ ≥ 3 kNN points and
Δ > 2 pooled std); and the mined relations' effect paired by seed (every
ReKD variant against the same run without relations, ``relation_effects``).
Output: JSON, Markdown (``.md``) and a bar plot (``.png``, one colour per
variant in every panel and no two variants alike, with MoCo v2's mean and
the kNN target drawn as lines).

Example::

    python benchmarks/quality_summary.py \\
        benchmarks/results/quality_small_*_seed*.json \\
        --out benchmarks/results/quality_small_summary.json
"""
import argparse
import json
import math
import os
import os.path as osp
import statistics
import sys
from collections import defaultdict
from typing import Dict, List, Optional

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
from common import command_line, markdown_table, variant_colours  # noqa: E402
from quality_variants import parse_variant  # noqa: E402

METRICS = ('student_knn_top1', 'student_probe_top1', 'teacher_knn_top1',
           'teacher_probe_top1', 'train_wall_s', 'train_loop_s')
TARGET_DELTA = 3.0
# Every Δ and the target are against this variant.
BASELINE = 'mocov2'


def mean_std(values: List[float]) -> Dict:
    """Mean, sample std and count; the std of one value is undefined
    (``None``), not 0: one seed says nothing about the spread."""
    values = [float(v) for v in values]
    return dict(
        mean=statistics.fmean(values),
        std=statistics.stdev(values) if len(values) > 1 else None,
        n=len(values))


def pooled_std(a: Dict, b: Dict) -> Optional[float]:
    """Pooled sample std of two groups (``mean_std`` results), ``None``
    when the two have fewer than three values in all."""
    dof = a['n'] + b['n'] - 2
    if dof <= 0:
        return None
    # A group of one value adds (n - 1) * std² = 0 to the sum of squares.
    squares = sum((g['n'] - 1) * g['std']**2 for g in (a, b) if g['n'] > 1)
    return math.sqrt(squares / dof)


def summarise(result_files: List[dict]) -> Dict:
    """Group the records by data set and variant, over seeds.

    Raises:
        ValueError: When the files mix regimes or budgets, or one seed of
            a data set and variant appears twice.
    """
    settings = {(r['settings'].get('regime'), r['settings']['iters'])
                for r in result_files}
    if len(settings) != 1:
        raise ValueError(f'the files mix regimes/budgets {sorted(settings)}: '
                         'summarise one (regime, --iters) at a time')
    groups = defaultdict(lambda: defaultdict(list))
    records = {}  # (dataset, variant, seed) -> record
    for result in result_files:
        seed = result['settings']['seed']
        for rec in result['records']:
            key = (rec['dataset'], rec['variant'], seed)
            if key in records:
                raise ValueError(f'{key[0]} / {key[1]} seed {seed} appears '
                                 'twice')
            records[key] = rec
            group = groups[(rec['dataset'], rec['variant'])]
            group['seeds'].append(seed)
            for metric in METRICS:
                if rec.get(metric) is not None:
                    group[metric].append(rec[metric])
    rows = []
    for (dataset, variant), group in groups.items():
        row = dict(
            dataset=dataset, variant=variant, seeds=sorted(group['seeds']))
        for metric in METRICS:
            if group[metric]:
                row[metric] = mean_std(group[metric])
        rows.append(row)
    by_key = {(r['dataset'], r['variant']): r for r in rows}
    for row in rows:
        base = by_key.get((row['dataset'], BASELINE))
        if base is None or row['variant'] == BASELINE:
            continue
        for metric in ('student_knn_top1', 'student_probe_top1'):
            if metric in row and metric in base:
                delta = row[metric]['mean'] - base[metric]['mean']
                pooled = pooled_std(row[metric], base[metric])
                two_pooled = None if pooled is None else 2 * pooled
                row[f'delta_{metric}'] = dict(
                    delta=delta,
                    two_pooled_std=two_pooled,
                    target_met=(delta >= TARGET_DELTA and
                                min(row[metric]['n'], base[metric]['n']) >= 2
                                and delta > two_pooled))
    regime, iters = settings.pop()
    return dict(
        regime=regime,
        iters=iters,
        rows=rows,
        relation_effects=relation_effects(records))


def _relation_partner(spec: dict, specs: List[dict]) -> Optional[str]:
    """The run without relations that the variant ``spec`` is compared
    with (``parse_variant`` results): the online ReKD variant with the same
    KD weight and ``_no_relation`` (the miner knobs and the oracle only
    shape relations, so it has none of them); ``None`` for MoCo v2, the
    reference rows, a variant without relations or with an offline teacher,
    or when no such run is given."""
    if spec['algorithm'] != 'rekd' or spec['no_relation'] or spec['offline']:
        return None
    for cand in specs:
        if (cand['algorithm'] == 'rekd' and cand['no_relation']
                and not cand['offline'] and not cand['oracle']
                and cand['num_prototypes'] is None
                and cand['threshold'] is None
                and cand['kd_weight'] == spec['kd_weight']):
            return cand['name']
    return None


def _gap_to_teacher(rec: dict) -> Optional[float]:
    if rec.get('student_knn_top1') is None or rec.get(
            'teacher_knn_top1') is None:
        return None
    return rec['student_knn_top1'] - rec['teacher_knn_top1']


def _paired(pairs: List[tuple], measure) -> List[float]:
    """``measure(with) - measure(without)`` of every pair where both have
    the measure."""
    values = [(measure(a), measure(b)) for a, b in pairs]
    return [a - b for a, b in values if a is not None and b is not None]


def relation_effects(records: Dict[tuple, dict]) -> List[Dict]:
    """What the relations change, paired by seed.

    A ReKD run and the same run without relations (``_no_relation``: the
    miner never starts) of one seed share their initial weights, data order
    and shuffle; the teacher does not see the student's relation loss, so
    on the same host and thread count it ends identical to the last digit,
    and the student's difference is the relations' alone. A paired
    difference removes what the seed moves in both runs (its teacher above
    all), so it can tell a smaller effect from noise than the two groups'
    means can. Where the teachers differ (another thread count or CPU changes
    the float sums), the difference of the student's gap to its own
    teacher is the cleaner measure; both are reported.

    Args:
        records (dict): ``(dataset, variant, seed)`` -> the record of
            ``benchmarks/quality.py``.

    Returns:
        list[dict]: per data set and ReKD variant with a partner, ``with``
        and ``without`` (variant names), ``seeds`` (those both have), the
        mean/std/n (``mean_std``) of the student's kNN and probe
        differences (``knn``, ``probe``) and of the gap difference
        (``gap``: (student − teacher) with relations less without), the
        per-seed kNN differences (``knn_by_seed``) and the seeds whose
        two teachers score the same kNN (``same_teacher``).
    """
    variants = defaultdict(set)
    for dataset, variant, _ in records:
        variants[dataset].add(variant)
    effects = []
    for dataset in sorted(variants):
        # Every name here parsed when quality.py ran it.
        specs = [parse_variant(v) for v in sorted(variants[dataset])]
        for spec in specs:
            variant = spec['name']
            partner = _relation_partner(spec, specs)
            if partner is None:
                continue
            seeds = sorted(
                seed for d, v, seed in records
                if (d, v) == (dataset, variant) and (dataset, partner,
                                                     seed) in records)
            pairs = [(records[(dataset, variant, seed)],
                      records[(dataset, partner, seed)]) for seed in seeds]
            if not pairs:
                continue
            knn = _paired(pairs, lambda rec: rec.get('student_knn_top1'))
            probe = _paired(pairs, lambda rec: rec.get('student_probe_top1'))
            gap = _paired(pairs, _gap_to_teacher)
            effect = {
                'dataset': dataset,
                'with': variant,
                'without': partner,
                'seeds': seeds,
                'knn_by_seed': knn
            }
            for name, values in (('knn', knn), ('probe', probe), ('gap', gap)):
                effect[name] = mean_std(values) if values else None
            effect['same_teacher'] = [
                seed for seed, (a, b) in zip(seeds, pairs)
                if a.get('teacher_knn_top1') is not None
                and a.get('teacher_knn_top1') == b.get('teacher_knn_top1')
            ]
            effects.append(effect)
    return effects


def _cell(stat: Optional[Dict], digits: int = 2, signed: bool = False) -> str:
    if not stat:
        return '-'
    mean = f"{stat['mean']:{'+' if signed else ''}.{digits}f}"
    if stat['std'] is None:
        return f"{mean} (n={stat['n']})"
    return f"{mean} ± {stat['std']:.{digits}f} (n={stat['n']})"


def _delta_cell(delta: Optional[Dict]) -> str:
    if delta is None:
        return '-'
    spread = ('no spread yet' if delta['two_pooled_std'] is None else
              f"{delta['two_pooled_std']:.2f}")
    return (f"{delta['delta']:+.2f} ({spread})" +
            (' ✓' if delta['target_met'] else ''))


def _minutes(stat: Optional[Dict]) -> Optional[Dict]:
    if not stat:
        return None
    std = None if stat['std'] is None else stat['std'] / 60
    return dict(stat, mean=stat['mean'] / 60, std=std)


def build_markdown(summary: Dict, command: str, files: List[str]) -> str:
    headers = [
        'dataset', 'variant', 'student kNN', 'Δ kNN vs MoCo v2 (2·pooled std)',
        'student probe', 'Δ probe', 'teacher kNN', 'train loop (min)'
    ]
    rows = []
    for row in summary['rows']:
        deltas = [
            _delta_cell(row.get(f'delta_{metric}'))
            for metric in ('student_knn_top1', 'student_probe_top1')
        ]
        rows.append([
            row['dataset'], row['variant'],
            _cell(row.get('student_knn_top1')), deltas[0],
            _cell(row.get('student_probe_top1')), deltas[1],
            _cell(row.get('teacher_knn_top1')),
            _cell(_minutes(row.get('train_loop_s')), digits=1)
        ])
    return '\n'.join([
        f"# Quality, mean ± std over seeds ({summary['regime']} regime, "
        f"{summary['iters']} iterations)", '',
        markdown_table(headers, rows), '',
        f'✓: Δ ≥ {TARGET_DELTA} kNN points and Δ > 2 × pooled std, with at '
        'least two seeds on each side (the target of issue #12, which counts '
        'for the method as users run it: a ✓ on an `_oracle` row, whose '
        'relations come from the labels, is an analysis bound). With one '
        'seed a cell has no ± and a Δ no spread: the std of one value is '
        'undefined. Per-seed '
        'tables: ' + ', '.join(f'`{osp.basename(f)}`' for f in files) +
        '. Train loop: the logged iteration times summed (start-up and '
        'scoring excluded; a run split across sessions counts like an uncut '
        'one).', ''
    ] + _relation_effects_markdown(summary['relation_effects']) +
                     [f'Command: `{command}`']) + '\n'


def _relation_effects_markdown(effects: List[Dict]) -> List[str]:
    if not effects:
        return []
    headers = [
        'dataset', 'with relations', 'without', 'seeds',
        'Δ student kNN by seed', 'Δ student kNN', 'Δ student probe',
        'Δ (student − teacher) kNN', 'same teacher in seeds'
    ]
    rows = []
    for e in effects:
        by_seed = ', '.join(f'{d:+.2f}' for d in e['knn_by_seed'])
        same_teacher = ', '.join(map(str, e['same_teacher'])) or 'none'
        rows.append([
            e['dataset'], e['with'], e['without'],
            ', '.join(map(str, e['seeds'])), by_seed,
            _cell(e['knn'], signed=True),
            _cell(e['probe'], signed=True),
            _cell(e['gap'], signed=True), same_teacher
        ])
    return [
        "## The relations' effect, paired by seed", '',
        markdown_table(headers, rows), '',
        'Each ReKD variant minus the same run without relations '
        '(`_no_relation`: the miner never starts; same KD weight), seed by '
        'seed: same initial weights, data order and shuffle. The teacher '
        'does not see the relation loss, so where both teachers score the '
        'same (same host and thread count) the student difference is the '
        "relations' alone; where they differ, the difference of the "
        "student's gap to its own teacher is the cleaner measure. An "
        '`_oracle` row takes its relations from the labels (an analysis '
        'bound).', ''
    ]


def plot_summary(summary: Dict, path: str) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    datasets = list(dict.fromkeys(r['dataset'] for r in summary['rows']))
    colours = variant_colours(r['variant'] for r in summary['rows'])
    metrics = (('student_knn_top1', 'student kNN top-1'),
               ('student_probe_top1', 'student probe top-1'))
    fig, axes = plt.subplots(
        len(metrics),
        max(1, len(datasets)),
        figsize=(5 * max(1, len(datasets)), 3.4 * len(metrics)),
        squeeze=False)
    for col, dataset in enumerate(datasets):
        rows = [r for r in summary['rows'] if r['dataset'] == dataset]
        for i, (metric, label) in enumerate(metrics):
            ax = axes[i][col]
            rows_m = [r for r in rows if metric in r]
            ax.bar(
                range(len(rows_m)),
                [r[metric]['mean'] for r in rows_m],
                # NaN draws no error bar (rather than one of 0) for a
                # single seed.
                yerr=[
                    math.nan if r[metric]['std'] is None else r[metric]['std']
                    for r in rows_m
                ],
                color=[colours[r['variant']] for r in rows_m],
                capsize=3)
            ax.set_xticks(range(len(rows_m)))
            ax.set_xticklabels([r['variant'] for r in rows_m],
                               rotation=30,
                               ha='right',
                               fontsize='small')
            ax.set_title(f'{dataset}: {label}', fontsize='medium')
            ax.grid(axis='y', alpha=0.3)
            baseline = [r for r in rows_m if r['variant'] == BASELINE]
            if baseline:
                # Lines, not only bars: on Fashion-MNIST every bar is
                # within a few points of 80 on a 0-90 scale.
                mean = baseline[0][metric]['mean']
                ax.axhline(mean, color='0.3', lw=0.8, ls='--', label=BASELINE)
                if metric == 'student_knn_top1':
                    ax.axhline(
                        mean + TARGET_DELTA,
                        color='0.3',
                        lw=0.8,
                        ls=':',
                        label=f'{BASELINE} + {TARGET_DELTA:g} (target)')
    # One legend above the panels: inside them it hides the bars.
    lines = {
        line.get_label(): line
        for ax in axes.flat for line in ax.get_lines()
        if not line.get_label().startswith('_')
    }
    if lines:
        fig.legend(
            lines.values(),
            lines.keys(),
            loc='upper center',
            ncol=len(lines),
            fontsize='small',
            frameon=False)
        fig.tight_layout(rect=(0, 0, 1, 0.96))
    else:
        fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None) -> Dict:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('results', nargs='+', help='quality.py JSON files')
    parser.add_argument('--out', required=True, help='summary JSON')
    args = parser.parse_args(argv)
    files = []
    for path in args.results:
        try:
            with open(path) as f:
                files.append(json.load(f))
        except (OSError, json.JSONDecodeError) as err:
            sys.exit(f'benchmarks/quality_summary.py: cannot read {path}: '
                     f'{err}')
    try:
        summary = summarise(files)
    except ValueError as err:
        sys.exit(f'benchmarks/quality_summary.py: {err}')
    summary.update(command=command_line(), inputs=args.results)
    os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
    stem = osp.splitext(args.out)[0]
    with open(args.out, 'w') as f:
        json.dump(summary, f, indent=2)
        f.write('\n')
    md = build_markdown(summary, summary['command'], args.results)
    with open(stem + '.md', 'w') as f:
        f.write(md)
    plot_summary(summary, stem + '.png')
    print(md)
    return summary


if __name__ == '__main__':
    main()
