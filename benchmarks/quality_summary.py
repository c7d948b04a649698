# Copyright (c) rekd_mm contributors. All rights reserved.
"""The final comparison of the quality benchmark: mean ± std over seeds.

Reads the per-seed result files of ``benchmarks/quality.py`` (one JSON per
data set and seed, same regime and budget) and writes, per data set and
variant, the mean and sample standard deviation of the student's kNN top-1
and linear-probe top-1, the teacher's, and the training loop's time; the
difference of every variant to MoCo v2 with twice the pooled standard
deviation, and whether the issue's target holds (Δ ≥ 3 kNN points and
Δ > 2 pooled std). Output: JSON, Markdown (``.md``) and a bar plot
(``.png``, one colour per variant in every panel).

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

METRICS = ('student_knn_top1', 'student_probe_top1', 'teacher_knn_top1',
           'teacher_probe_top1', 'train_wall_s', 'train_loop_s')
TARGET_DELTA = 3.0


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
    seen = set()
    for result in result_files:
        seed = result['settings']['seed']
        for rec in result['records']:
            key = (rec['dataset'], rec['variant'], seed)
            if key in seen:
                raise ValueError(f'{key[0]} / {key[1]} seed {seed} appears '
                                 'twice')
            seen.add(key)
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
        base = by_key.get((row['dataset'], 'mocov2'))
        if base is None or row['variant'] == 'mocov2':
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
    return dict(regime=regime, iters=iters, rows=rows)


def _cell(stat: Optional[Dict], digits: int = 2) -> str:
    if not stat:
        return '-'
    if stat['std'] is None:
        return f"{stat['mean']:.{digits}f} (n={stat['n']})"
    return (f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f} "
            f"(n={stat['n']})")


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
        'one).', '', f'Command: `{command}`'
    ]) + '\n'


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
