# Copyright (c) rekd_mm contributors. All rights reserved.
"""Learning curves of one config under different overrides: which regime
makes the student learn (issue #12, docs/quality.md "Regime search").

Each arm is the config (by default the small regime's MoCo v2 config of the
data set) plus ``KEY=VALUE`` overrides. It trains in a fresh
``tools/train.py`` process with a :class:`KNNMonitorHook` added
(``initial=True``: the curve starts at the initialisation, step 0), and the
student's (and teacher's) weighted-kNN top-1 on a fixed random subset of the
labelled splits is read back from the run's ``vis_data/scalars.json``
together with the training loss. The JSON (``--out``), a Markdown table and
a plot of the curves are rewritten after every finished arm, and arms
already in ``--out`` with the same settings are kept (a search split across
sessions); ``--resume`` continues an interrupted arm from its work dir's last
checkpoint and joins its curve to the earlier part's. The kNN here is on
subsets (``--knn-max-train``/``--knn-max-val``) to keep the curves cheap:
use it to rank settings, and ``benchmarks/quality.py`` for the numbers of a
table.

Example (two arms of one data set; run one process per core)::

    python benchmarks/regime_search.py --dataset cifar10 --iters 1000 \\
        --arm lr0.015 optim_wrapper.optimizer.lr=0.015 \\
        --arm lr0.03 optim_wrapper.optimizer.lr=0.03 \\
        --out benchmarks/results/regime_search_cifar10.json
"""
import argparse
import glob
import json
import os
import os.path as osp
import shlex
import sys
import time
from typing import Dict, List, Optional

# isort: off
sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
from common import (  # noqa: E402
    command_line, machine_info, markdown_table, variant_colours)
from train_runs import (  # noqa: E402
    DATASETS, REPO_ROOT, read_all_scalars, run_train)
# isort: on

__all__ = ['parse_args', 'arm_curves', 'build_markdown', 'main']

CURVE_KEYS = ('knn/student_top1', 'knn/teacher_top1')


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='kNN learning curves of a config under overrides')
    parser.add_argument('--dataset', choices=sorted(DATASETS), required=True)
    parser.add_argument(
        '--config',
        default=None,
        help="the config to vary (default: the small regime's MoCo v2 config "
        'of --dataset)')
    parser.add_argument(
        '--arm',
        nargs='+',
        action='append',
        required=True,
        metavar=('NAME', 'KEY=VALUE'),
        help='one arm: a name and its overrides (none: the config as is); '
        'repeat for more arms')
    parser.add_argument('--iters', type=int, default=1000)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument(
        '--knn-interval', type=int, default=250, help='iterations per point')
    parser.add_argument('--knn-max-train', type=int, default=10000)
    parser.add_argument('--knn-max-val', type=int, default=2000)
    parser.add_argument('--knn-k', type=int, default=200)
    parser.add_argument('--threads', type=int, default=1)
    parser.add_argument('--work-root', default='work_dirs/regime_search')
    parser.add_argument(
        '--resume',
        action='store_true',
        help="continue an arm from its work dir's latest checkpoint (a long "
        'arm split across sessions); its curve joins the earlier part\'s')
    parser.add_argument('--out', required=True, help='JSON result file')
    args = parser.parse_args(argv)
    if args.iters < 1 or args.knn_interval < 1:
        parser.error('--iters and --knn-interval must be >= 1')
    names = [arm[0] for arm in args.arm]
    if len(set(names)) != len(names):
        parser.error(f'--arm names repeat: {names}')
    for name, *options in args.arm:
        bad = [item for item in options if '=' not in item]
        if bad:
            parser.error(f'--arm {name}: {bad} are not KEY=VALUE')
        if '/' in name or name.startswith('.'):
            parser.error(f'--arm {name}: a name is a directory name, '
                         "without '/' or a leading '.'")
    args.config = args.config or DATASETS[args.dataset]['mocov2']
    return args


def arm_curves(entries: List[dict]) -> Dict[str, list]:
    """``[step, value]`` pairs of the kNN scores and of the training loss,
    sorted by step.

    kNN entries come from :class:`KNNMonitorHook` (``step`` is the number of
    finished iterations, 0 for the initialisation); loss entries from the
    logger (``iter``). Entries of a resumed run follow the interrupted
    run's: a step logged twice keeps its later value.
    """
    points = {key: {} for key in CURVE_KEYS + ('loss', )}
    for entry in entries:
        for key in CURVE_KEYS:
            if key in entry:
                points[key][int(entry['step'])] = float(entry[key])
        if 'iter' in entry and 'loss' in entry:
            points['loss'][int(entry['iter'])] = float(entry['loss'])
    return {
        key: [[step, value] for step, value in sorted(values.items())]
        for key, values in points.items()
    }


def _monitored_config(args, work_dir: str) -> str:
    """The config with a :class:`KNNMonitorHook` appended, dumped into the
    work dir (overrides stay on the command line, as a user would pass
    them)."""
    from mmengine.config import Config
    cfg = Config.fromfile(osp.join(REPO_ROOT, args.config))
    cfg.custom_hooks = list(cfg.get('custom_hooks', [])) + [
        dict(
            type='KNNMonitorHook',
            interval=args.knn_interval,
            by_epoch=False,
            k=args.knn_k,
            max_train_samples=args.knn_max_train,
            max_val_samples=args.knn_max_val,
            seed=0,
            initial=True)
    ]
    path = osp.join(work_dir, 'monitored_config.py')
    cfg.dump(path)
    return path


def _clear_logs(work_dir: str) -> None:
    """Move an earlier run's log dirs aside, so that a fresh run's curve is
    not joined to them (``--resume`` joins them on purpose)."""
    old = sorted(glob.glob(osp.join(work_dir, '[0-9]*_[0-9]*')))
    if old:
        stale = osp.join(work_dir, 'stale_logs')
        os.makedirs(stale, exist_ok=True)
        for log_dir in old:
            os.replace(log_dir, osp.join(stale, osp.basename(log_dir)))


def _settings(args) -> Dict:
    """What must match for a stored arm to be comparable."""
    return dict(
        dataset=args.dataset,
        iters=args.iters,
        seed=args.seed,
        knn_interval=args.knn_interval,
        knn_max_train=args.knn_max_train,
        knn_max_val=args.knn_max_val,
        knn_k=args.knn_k)


def _load_previous(out: str, settings: Dict) -> Dict:
    if not osp.isfile(out):
        return {}
    with open(out) as f:
        previous = json.load(f)
    if previous.get('settings') != settings:
        raise SystemExit(f'{out} holds a search with other settings '
                         f"({previous.get('settings')}); choose another --out")
    return previous.get('arms', {})


def build_markdown(results: Dict) -> str:
    """One row per arm: its overrides (and config, when the arms carry
    their own, see ``regime_merge.py``), the student's kNN at every point,
    the final loss and the wall time."""
    arms = results['arms']
    per_arm_config = any('config' in arm for arm in arms.values())
    steps = sorted({
        step
        for arm in arms.values()
        for step, _ in arm['curves']['knn/student_top1']
    })
    headers = ['arm'] + (['config'] if per_arm_config else []) + [
        'overrides'
    ] + [f'kNN@{s}'
         for s in steps] + ['teacher kNN (last)', 'loss (last)', 'wall (min)']
    rows = []
    for name, arm in arms.items():
        student = dict(map(tuple, arm['curves']['knn/student_top1']))
        teacher = arm['curves']['knn/teacher_top1']
        loss = arm['curves']['loss']
        config = [f"`{osp.basename(arm.get('config', ''))}`"
                  ] if per_arm_config else []
        rows.append([
            name, *config, ' '.join(arm['options']) or '(config as is)',
            *[f'{student[s]:.2f}' if s in student else ''
              for s in steps], f'{teacher[-1][1]:.2f}' if teacher else '',
            f'{loss[-1][1]:.3f}' if loss else '', f"{arm['wall_s'] / 60:.1f}"
        ])
    s = results['settings']
    return (f"# Regime search: {s['dataset']}, {s['iters']} iterations, "
            f"seed {s['seed']}\n\n"
            f"Config: `{results['config']}`. Student weighted-kNN top-1 "
            f"(k={s['knn_k']}, T=0.07) on a fixed random subset "
            f"({s['knn_max_train']} train / {s['knn_max_val']} test images; "
            'step 0 = initialisation). Use it to rank settings, not as a '
            'table number.\n\n' + markdown_table(headers, rows) +
            '\n\nCommands:\n\n```shell\n' + '\n'.join(results['commands']) +
            '\n```\n')


def plot_curves(results: Dict, path: str) -> None:
    """Student kNN and training loss against iterations, one colour per
    arm in both panels."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    colours = variant_colours(list(results['arms']))
    fig, (knn_ax, loss_ax) = plt.subplots(1, 2, figsize=(11, 4))
    for name, arm in results['arms'].items():
        for key, style in (('knn/student_top1', '-'), ('knn/teacher_top1',
                                                       ':')):
            if arm['curves'][key]:
                x, y = zip(*arm['curves'][key])
                label = name if key.endswith('student_top1') else \
                    f'{name} (teacher)'
                knn_ax.plot(
                    x, y, style, marker='o', color=colours[name], label=label)
        if arm['curves']['loss']:
            x, y = zip(*arm['curves']['loss'])
            loss_ax.plot(x, y, color=colours[name], label=name)
    knn_ax.set(xlabel='iteration', ylabel='kNN top-1 (subset)')
    loss_ax.set(xlabel='iteration', ylabel='training loss')
    knn_ax.legend(fontsize=7)
    loss_ax.legend(fontsize=7)
    fig.suptitle(f"{results['settings']['dataset']}: {results['config']}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _write(results: Dict, out: str) -> None:
    os.makedirs(osp.dirname(osp.abspath(out)), exist_ok=True)
    stem = osp.splitext(out)[0]
    for path, text in ((out, json.dumps(results,
                                        indent=2)), (stem + '.md',
                                                     build_markdown(results))):
        with open(path + '.tmp', 'w') as f:
            f.write(text + '\n')
        os.replace(path + '.tmp', path)
    plot_curves(results, stem + '.png')


def main(argv: Optional[List[str]] = None) -> Dict:
    args = parse_args(argv)
    settings = _settings(args)
    previous = _load_previous(args.out, settings)
    results = dict(
        settings=settings,
        config=args.config,
        machine=machine_info(),
        commands=[],
        arms=previous)
    if osp.isfile(args.out):
        with open(args.out) as f:
            results['commands'] = json.load(f).get('commands', [])
    results['commands'].append(command_line())
    for name, *options in args.arm:
        work_dir = osp.join(REPO_ROOT, args.work_root, args.dataset, name)
        os.makedirs(work_dir, exist_ok=True)
        config = _monitored_config(args, work_dir)
        options = [
            f'train_cfg.max_iters={args.iters}',
            f'randomness.seed={args.seed}', *options
        ]
        print(
            f'[regime_search] {args.dataset}/{name}: '
            f'{shlex.join(options)}',
            flush=True)
        start = time.time()
        if not args.resume:
            _clear_logs(work_dir)
        run = run_train(
            config, work_dir, options, args.threads, None, resume=args.resume)
        # With --resume, wall_s is this session's part only.
        results['arms'][name] = dict(
            options=options[2:],
            command=run['command'],
            wall_s=time.time() - start,
            resumed=args.resume,
            curves=arm_curves(read_all_scalars(work_dir)))
        _write(results, args.out)
        student = results['arms'][name]['curves']['knn/student_top1']
        print(f'[regime_search] {name}: student kNN {student}', flush=True)
    return results


if __name__ == '__main__':
    main()
