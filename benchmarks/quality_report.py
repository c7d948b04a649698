# Copyright (c) rekd_mm contributors. All rights reserved.
"""What ``benchmarks/quality.py`` reads back from a run's logs (relation
statistics, linear-probe accuracy) and what it writes: the JSON, the
Markdown table and the plot of the relation statistics.

Imported by ``quality.py`` (which puts this folder on ``sys.path``);
matplotlib is imported where a plot is drawn.
"""
import json
import math
import os
import os.path as osp
from typing import Dict, List, Sequence

from common import markdown_table, variant_colours

__all__ = [
    'RELATION_KEYS', 'relation_series', 'probe_accuracy', 'build_markdown',
    'plot_relation', 'write_results'
]

# Statistics that ReKD logs every iteration (see ReKD._relation_stats).
RELATION_KEYS = ('relation_precision', 'proto_in_use',
                 'relation_pos_per_anchor', 'proto_assigned_ratio')


# --------------------------------------------------------------------------
# Reading what a run logged
# --------------------------------------------------------------------------
def relation_series(entries: List[dict],
                    keys: Sequence[str] = RELATION_KEYS) -> Dict[str, list]:
    """``[iteration, value]`` pairs of each statistic in training entries.

    A value is the mean over the log processor's window, as logged.
    ``relation_precision`` is only present at iterations where some mined
    pair had known labels.
    """
    series = {key: [] for key in keys}
    for entry in entries:
        if 'iter' not in entry:  # validation entries have no 'iter'
            continue
        for key in keys:
            if key in entry and math.isfinite(float(entry[key])):
                series[key].append([int(entry['iter']), float(entry[key])])
    return series


def probe_accuracy(entries: List[dict]) -> Dict:
    """Validation top-1/top-5 of a linear probe, per epoch and final."""
    epochs = [
        dict(
            epoch=int(e.get('step', i + 1)),
            top1=float(e['accuracy/top1']),
            top5=float(e['accuracy/top5']) if 'accuracy/top5' in e else None)
        for i, e in enumerate(x for x in entries if 'accuracy/top1' in x)
    ]
    if not epochs:
        raise ValueError('the linear probe logged no accuracy/top1: was '
                         'validation disabled (val_interval)?')
    return dict(
        top1=epochs[-1]['top1'], top5=epochs[-1]['top5'], epochs=epochs)


# --------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------
def _fmt(value, digits: int = 2):
    return None if value is None else round(float(value), digits)


def build_markdown(results: Dict) -> str:
    """The Markdown summary: one row per data set and variant."""
    records = results['records']
    settings = results['settings']
    knn_k = settings['knn_k']
    headers = [
        'dataset', 'variant', f'student kNN top-1 (k={knn_k})', 'Δ vs MoCo v2',
        'student probe top-1', f'teacher kNN top-1 (k={knn_k})',
        'teacher probe top-1', 'relation precision (last)', 'train loop (min)'
    ]
    rows = []
    for rec in records:
        rows.append([
            rec['dataset'], rec['variant'],
            _fmt(rec['student_knn_top1']),
            _fmt(rec.get('delta_vs_mocov2')),
            _fmt(rec.get('student_probe_top1')),
            _fmt(rec.get('teacher_knn_top1')),
            _fmt(rec.get('teacher_probe_top1')),
            _fmt(rec.get('relation_precision_last'), 3),
            _fmt(rec['train_loop_s'] /
                 60, 1) if rec.get('train_loop_s') is not None else None
        ])
    knn_sizes = ', '.join(
        sorted({
            f"{r['dataset']}: {r['knn']['student']['num_train']} train / "
            f"{r['knn']['student']['num_val']} val"
            for r in records
        }))
    lines = [
        f"# ReKD vs MoCo v2: student quality ({settings['iters']} iterations, "
        f"seed {settings['seed']})",
        '',
        markdown_table(headers, rows),
        '',
        f'kNN: weighted, T=0.07, on {knn_sizes or "-"}. Probe: ' +
        ('multinomial logistic regression on the frozen, un-augmented '
         'features (standardised; L-BFGS to convergence; L2 penalty chosen '
         'on a held-out tenth of the training split). ' if settings.get(
             'feature_probe', True) else 'not run '
         '(--no-feature-probe). ') + 'Reference rows: '
        '`untrained` (a freshly initialised student), `pixels` (raw pixels, '
        'centred), `supervised` (labels + cross-entropy, same budget). '
        '`_oracle` variants take their relations from the labels (analysis '
        'upper bound). Relation precision: share of mined positive pairs of '
        'the same class, last logged value (window mean). Train loop: the '
        'logged iteration times summed, every iteration once (a run split '
        'across sessions counts like an uncut one; start-up and scoring '
        'excluded).',
        '',
        *[
            f'Command: `{command}`  '
            for command in results.get('commands', [results['command']])
        ],
        f"Commit: `{results['git_commit']}`" +
        (' (uncommitted changes)' if results.get('git_dirty') else '') +
        f"; machine: {results['machine']['cpu_model']}, "
        f"{results['machine']['usable_cores']} usable cores, "
        f"{settings['threads']} thread(s) per run.",
    ]
    return '\n'.join(lines)


def plot_relation(results: Dict, path: str) -> None:
    """Relation precision and positives per anchor over iterations, one
    column per data set, one line per variant (matplotlib, Agg)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    datasets = list(dict.fromkeys(r['dataset'] for r in results['records']))
    datasets = datasets or ['-']
    colours = variant_colours(r['variant'] for r in results['records'])
    rows = (('relation_precision', 'relation precision'),
            ('relation_pos_per_anchor', 'mined positives / anchor'))
    fig, axes = plt.subplots(
        len(rows),
        len(datasets),
        figsize=(5 * len(datasets), 3.2 * len(rows)),
        squeeze=False)
    for col, dataset in enumerate(datasets):
        for row, (key, label) in enumerate(rows):
            ax = axes[row][col]
            plotted = False
            for rec in results['records']:
                points = rec.get('relation', {}).get(key) or []
                if rec['dataset'] != dataset or not points:
                    continue
                xs, ys = zip(*points)
                ax.plot(
                    xs,
                    ys,
                    marker='.',
                    color=colours[rec['variant']],
                    label=rec['variant'])
                plotted = True
            if not plotted:
                ax.text(
                    0.5,
                    0.5,
                    'no relation mined',
                    ha='center',
                    va='center',
                    transform=ax.transAxes)
            else:
                ax.legend(fontsize='small')
            ax.set_title(f'{dataset}: {label}', fontsize='medium')
            ax.set_xlabel('iteration')
            ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_results(results: Dict, out: str) -> Dict[str, str]:
    """JSON, Markdown (``.md``) and plot (``.png``) next to each other."""
    os.makedirs(osp.dirname(osp.abspath(out)), exist_ok=True)
    stem = osp.splitext(out)[0]
    paths = dict(json=out, markdown=stem + '.md', plot=stem + '.png')
    results['outputs'] = paths
    with open(paths['json'], 'w') as f:
        json.dump(results, f, indent=2)
        f.write('\n')
    with open(paths['markdown'], 'w') as f:
        f.write(build_markdown(results).rstrip() + '\n')
    plot_relation(results, paths['plot'])
    return paths
