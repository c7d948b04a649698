# Copyright (c) rekd_mm contributors. All rights reserved.
"""What ReKD buys over MoCo v2: the same MobileNetV2 student, pretrained both
ways, scored by kNN (and optionally a linear probe).

For every data set (Fashion-MNIST, CIFAR-10) and every variant, the student
is pretrained by mmengine's ``Runner`` in a fresh subprocess
(``tools/train.py --work-dir ... --cfg-options train_cfg.max_iters=N ...``)
from the paired demo configs, which share the student, queue, momentum,
temperature, data, augmentations, batch and schedule. Then:

- the student's (and, for ReKD, the teacher's) weighted-kNN top-1
  (:func:`rekd_mm.evaluation.run_knn_eval`, k = 200 and 20, T = 0.07);
- optionally (``--probe-epochs E``) the linear-probe top-1 of the student
  (``configs/benchmarks/linear_probe/...`` through ``tools/train.py``; the
  last validation accuracy logged in the probe's ``vis_data/scalars.json``);
- for ReKD, the relation statistics logged during training
  (``relation_precision``: share of mined positive pairs whose true classes
  agree; ``proto_in_use``; ``relation_pos_per_anchor``), read per logged
  iteration from the run's ``vis_data/scalars.json``;
- the wall time of every run, and its training loop's time summed from the
  logged iteration times (comparable when a run was split across sessions).

Variants (``--variants``):

- ``mocov2``: mmpretrain's MoCo v2 on the student (the baseline);
- ``rekd``: the regime's ReKD config (online ResNet-18 teacher) without
  response KD: ``model.loss_weights.kd=0 model.kd_projection=False`` are
  set explicitly, since the small4k configs distil by default (session
  13, docs/method.md #27), so ``rekd`` names the same runs in every
  committed table; ``rekd_kd4`` is the small4k configs' default (since
  session 24; ``rekd_kd1`` the one of sessions 13-23);
- ``rekd_no_relation``: ReKD whose prototype bank is never clustered: the
  student's relation head then has no mined positive, i.e. plain InfoNCE
  (MoCo v2) with the online teacher trained alongside. This isolates the
  relation term; ``model.loss_weights.relation=0`` would not (it scales the
  student's only loss, so the student would not train at all);
- ``rekd_offline``: the teacher is loaded from ``--offline-teacher`` (e.g. a
  MoCo v2 checkpoint of the teacher architecture, ``prefix=''``) and frozen;
- modifiers, combinable after ``rekd``: ``_k{K}`` (number of prototypes K),
  ``_theta{Θ}`` (assignment threshold Θ), ``_no_relation``, ``_offline``,
  ``_oracle``, ``_kd{W}`` (the response-KD term of weight W through the
  student's projection into the teacher's space:
  ``model.loss_weights.kd=W model.kd_projection=True``), e.g. ``rekd_k50``,
  ``rekd_theta0.7``, ``rekd_k50_theta0.3``, ``rekd_kd1``,
  ``rekd_no_relation_kd1``.

Results: a JSON file (``--out``, with the exact command line, machine,
git commit and every run's overrides), a Markdown table next to it
(``.md``) and a plot of the relation statistics over iterations (``.png``).
The JSON is rewritten after every run, so a long benchmark that stops keeps
what it finished. The training subprocesses and the reading of what they
logged are in ``train_runs.py`` (shared with ``regime_search.py``), the
variant grammar in ``quality_variants.py``, the scoring in
``quality_eval.py``, the JSON / Markdown / plot in ``quality_report.py``;
this file plans the runs and drives them.

Examples::

    # the full benchmark (a few hours on 2 cores)
    python benchmarks/quality.py --datasets fashion-mnist cifar10 \\
        --iters 2000 --variants mocov2 rekd rekd_no_relation \\
        --probe-epochs 10 --threads 2 \\
        --out benchmarks/results/quality.json
    # a quick look (about 10 minutes on one core)
    python benchmarks/quality.py --datasets fashion-mnist --iters 400 \\
        --knn-max-train 10000 --threads 1
"""
import argparse
import json
import os
import os.path as osp
import shlex
import sys
import time
from typing import Dict, List, Optional

# isort: off
sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
from common import command_line, git_dirty, machine_info  # noqa: E402
from quality_report import (  # noqa: E402
    build_markdown, probe_accuracy, relation_series, write_results)
from quality_variants import (  # noqa: E402
    miner_hook_index, offline_teachers, parse_variant, variant_cfg_options)
from train_runs import (  # noqa: E402
    DATASETS, REGIME_ITERS, REGIMES, check_data, dataset_options,
    last_checkpoint, load_cfg, read_all_scalars, read_scalars, run_train,
    train_loop_seconds)
# isort: on

__all__ = ['parse_args', 'main']


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Student quality of ReKD vs MoCo v2 (kNN, linear probe, '
        'relation precision)')
    parser.add_argument(
        '--datasets',
        nargs='+',
        choices=sorted(DATASETS),
        default=['fashion-mnist', 'cifar10'])
    parser.add_argument(
        '--regime',
        choices=sorted(REGIMES),
        default='small',
        help="the paired configs: 'small' (stride-1 stems, the quality "
        "regime, 2000 iterations), 'small4k' (the same with split BN, lr "
        "0.015, Fashion-MNIST crops (0.5, 1), 4000 iterations) or 'demo' "
        "(the CPU demos, 400 iterations)")
    parser.add_argument(
        '--variants',
        nargs='+',
        default=['mocov2', 'rekd'],
        help="'mocov2', 'rekd', 'rekd_no_relation', 'rekd_offline', and "
        "'rekd' with modifiers _k{K} _theta{Θ} _kd{W} (e.g. "
        'rekd_k50_theta0.7, rekd_no_relation_kd1)')
    parser.add_argument(
        '--mocov2-config',
        default=None,
        metavar='CONFIG',
        help="train and score the 'mocov2' variant from this config instead "
        "of the regime's (an analysis arm, e.g. benchmarks/configs/"
        'mocov2-hash-shuffle_*.py; give one --datasets and an --out outside '
        'quality_<regime>_*, so that the summary does not count it as MoCo '
        'v2)')
    parser.add_argument(
        '--iters',
        type=int,
        default=None,
        help="train_cfg.max_iters; defaults to the regime's (2000 for "
        "'small', 4000 for 'small4k', 400 for 'demo')")
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument(
        '--threads',
        type=int,
        default=2,
        help='OMP_NUM_THREADS of the training runs and torch threads of '
        'the kNN evaluation')
    parser.add_argument(
        '--work-root',
        default='work_dirs/quality',
        help='work dirs go to <work-root>/<dataset>/<variant>')
    parser.add_argument(
        '--out',
        default=None,
        help='JSON result file (default <work-root>/quality.json); the '
        'Markdown table (.md) and the plot (.png) are written next to it')
    parser.add_argument(
        '--cifar-root',
        default=None,
        help='CIFAR-10 folder with train/ and test/ (default: the configs\', '
        '../shared/data/cifar10 from the repository root)')
    parser.add_argument(
        '--knn-max-train',
        type=int,
        default=None,
        help='random subset of the kNN memory bank (default: all)')
    parser.add_argument(
        '--knn-max-val',
        type=int,
        default=None,
        help='random subset of the kNN queries (default: all)')
    parser.add_argument(
        '--knn-k', type=int, default=200, help='k reported in the table')
    parser.add_argument(
        '--probe-epochs',
        type=int,
        default=0,
        help='linear-probe epochs for every student (0: no probe)')
    parser.add_argument(
        '--probe-variants',
        nargs='+',
        default=None,
        help='probe only these variants (default: all of --variants)')
    parser.add_argument(
        '--offline-teacher',
        nargs='+',
        default=None,
        help="teacher checkpoint of the '_offline' variants: one path for "
        'every data set or DATASET=PATH entries')
    parser.add_argument(
        '--offline-teacher-prefix',
        default='',
        help="prefix before backbone./neck. in that checkpoint: '' for MoCo "
        "(default), 'teacher.' for a ReKD checkpoint")
    parser.add_argument(
        '--miner-init-iter',
        type=int,
        default=None,
        help="iteration at which ReKD's prototype bank is first clustered "
        '(RelationMinerHook init_iter; default: the config\'s)')
    parser.add_argument(
        '--extra-cfg-options',
        nargs='+',
        default=[],
        metavar='KEY=VALUE',
        help='overrides passed to every pretraining run (MoCo v2 and ReKD) '
        'and used for its kNN evaluation, e.g. model.queue_len=256 '
        'train_dataloader.batch_size=16')
    parser.add_argument(
        '--rekd-cfg-options',
        nargs='+',
        default=[],
        metavar='KEY=VALUE',
        help='overrides passed to the ReKD runs only (keys MoCo does not '
        'have), e.g. model.miner.num_prototypes=8')
    parser.add_argument(
        '--probe-cfg-options',
        nargs='+',
        default=[],
        metavar='KEY=VALUE',
        help='overrides passed to every linear-probe run')
    parser.add_argument(
        '--timeout',
        type=float,
        default=None,
        help='seconds allowed to each training subprocess (default: none)')
    parser.add_argument(
        '--append',
        action='store_true',
        help='keep the records already in --out (same --iters and --seed '
        'only) and add this run\'s; a record of the same data set and '
        'variant is replaced. For variants that need an earlier run\'s '
        'output, e.g. rekd_offline with the teacher of a finished rekd run')
    parser.add_argument(
        '--reuse',
        action='store_true',
        help='skip training where the work dir holds a finished run of the '
        'same config and overrides (its train_record.json), and only score '
        'it again')
    parser.add_argument(
        '--resume',
        action='store_true',
        help='continue an interrupted training from its work dir\'s latest '
        'checkpoint (a long study split across sessions); its wall time then '
        'counts this part only')
    parser.add_argument(
        '--no-feature-probe',
        dest='feature_probe',
        action='store_false',
        help='skip the linear probe on frozen features (L-BFGS to '
        'convergence, seconds per backbone)')
    parser.add_argument(
        '--dry-run',
        action='store_true',
        help='print the planned training commands and exit')
    args = parser.parse_args(argv)
    if args.iters is None:
        args.iters = REGIME_ITERS[args.regime]
    if args.iters < 1:
        parser.error('--iters must be >= 1')
    if args.threads < 1:
        parser.error('--threads must be >= 1')
    if args.probe_epochs < 0:
        parser.error('--probe-epochs must be >= 0')
    for opt in ('extra_cfg_options', 'rekd_cfg_options', 'probe_cfg_options'):
        bad = [item for item in getattr(args, opt) if '=' not in item]
        if bad:
            parser.error(f"--{opt.replace('_', '-')}: {bad} are not "
                         'KEY=VALUE')
    try:
        args.specs = [parse_variant(v) for v in args.variants]
    except ValueError as err:
        parser.error(str(err))
    if args.mocov2_config is not None:
        if not osp.isfile(args.mocov2_config):
            parser.error(f'--mocov2-config {args.mocov2_config}: no such '
                         'file')
        if 'mocov2' not in args.variants or len(args.datasets) != 1:
            parser.error('--mocov2-config replaces the config of one data '
                         "set's 'mocov2' variant: give --variants mocov2 and "
                         'one --datasets')
        if args.out and osp.basename(args.out).startswith('quality_'):
            parser.error(f'--out {args.out}: an arm trained from '
                         '--mocov2-config is not the study\'s MoCo v2; name '
                         "its results outside quality_* (e.g. analysis_*)")
    if len(set(args.variants)) != len(args.variants):
        parser.error(f'--variants has duplicates: {args.variants}')
    unknown = set(args.probe_variants or []) - set(args.variants)
    if unknown:
        parser.error(f'--probe-variants {sorted(unknown)} are not in '
                     f'--variants {args.variants}')
    return args


def _plan(args) -> List[Dict]:
    """Every run: data set, variant, config and overrides."""
    teachers = offline_teachers(args.offline_teacher, args.datasets) if any(
        s['offline'] for s in args.specs) else {}
    plan = []
    for dataset in args.datasets:
        check_data(dataset, args.cifar_root)
        paths = REGIMES[args.regime][dataset]
        data_opts = dataset_options(dataset, args.cifar_root)
        hook_index = miner_hook_index(paths['rekd'])
        for spec in args.specs:
            if spec['offline'] and dataset not in teachers:
                raise ValueError(
                    f"variant {spec['name']!r} on {dataset}: no "
                    f'--offline-teacher for it (give PATH or {dataset}=PATH)')
            # The reference rows without training are scored with the MoCo
            # v2 config's student and data.
            config = paths.get(spec['algorithm'], paths['mocov2'])
            if spec['algorithm'] == 'mocov2' and args.mocov2_config:
                config = args.mocov2_config
            options = [
                f'train_cfg.max_iters={args.iters}',
                f'randomness.seed={args.seed}'
            ] + data_opts['train'] + list(args.extra_cfg_options)
            if spec['algorithm'] == 'rekd':
                options += list(args.rekd_cfg_options)
            # Last, so that the variant's name stays true to what ran.
            options += variant_cfg_options(
                spec,
                args.iters,
                miner_hook_index=hook_index,
                miner_init_iter=args.miner_init_iter,
                offline_teacher=teachers.get(dataset),
                offline_prefix=args.offline_teacher_prefix)
            work_dir = osp.abspath(
                osp.join(args.work_root, dataset, spec['name']))
            plan.append(
                dict(
                    dataset=dataset,
                    spec=spec,
                    config=config,
                    options=options,
                    work_dir=work_dir,
                    probe_config=paths['probe'],
                    probe_options=paths['probe_options'] + data_opts['probe'] +
                    list(args.probe_cfg_options)))
    return plan


def _merge_previous(results: Dict, out: str, plan: List[Dict]) -> float:
    """``--append``: carry the records of an earlier run of the same budget.

    Returns:
        float: The earlier run's ``total_wall_s``.

    Raises:
        ValueError: When ``out`` was written with other ``--iters`` or
            ``--seed`` (the table compares runs at equal budget only).
    """
    with open(out) as f:
        previous = json.load(f)
    for key in ('iters', 'seed'):
        old, new = previous['settings'][key], results['settings'][key]
        if old != new:
            raise ValueError(
                f'--append: {out} holds runs with --{key} {old}, this run '
                f'has --{key} {new}; the table compares equal budgets only '
                '(write to another --out)')
    replaced = {(item['dataset'], item['spec']['name']) for item in plan}
    results['records'] = [
        rec for rec in previous['records']
        if (rec['dataset'], rec['variant']) not in replaced
    ]
    results['commands'] = previous.get(
        'commands', [previous['command']]) + results['commands']
    for key in ('datasets', 'variants'):
        results['settings'][key] = list(
            dict.fromkeys(previous['settings'][key] +
                          results['settings'][key]))
    return previous.get('total_wall_s', 0.)


def _train_or_reuse(item: Dict, args) -> Dict:
    """Train the item's config, or with ``--reuse`` take a finished run of
    the same config and overrides from its work dir (``train_record.json``
    is written next to the checkpoint after every run)."""
    record_path = osp.join(item['work_dir'], 'train_record.json')
    if args.reuse and osp.isfile(record_path):
        with open(record_path) as f:
            run = json.load(f)
        if (run.get('config'), run.get('options')) == (item['config'],
                                                       item['options']):
            print(
                f"[{item['dataset']} / {item['spec']['name']}] reusing "
                f"{record_path}",
                flush=True)
            run['reused'] = True
            return run
    print(
        f"[{item['dataset']} / {item['spec']['name']}] training "
        f"{args.iters} iterations ...",
        flush=True)
    run = run_train(item['config'], item['work_dir'], item['options'],
                    args.threads, args.timeout, args.resume)
    run.update(config=item['config'], options=item['options'])
    if '--resume' in run['command']:
        # Wall time of this part only; earlier parts are in stdout.log.
        run['resumed'] = True
    with open(record_path, 'w') as f:
        json.dump(run, f, indent=2)
    return run


def _training_summary(rec: Dict, entries: List[dict]) -> None:
    """Last logged losses, median iteration time and relation series."""
    train_entries = [e for e in entries if 'iter' in e]
    if train_entries:
        last = train_entries[-1]
        rec['last_logged'] = {
            k: v
            for k, v in last.items() if k.startswith('loss') or k == 'iter'
        }
        times = [float(e['time']) for e in train_entries if 'time' in e]
        rec['iter_time_s_median'] = sorted(times)[len(times) //
                                                  2] if times else None
    # Comparable whether or not the run was split across sessions.
    rec['train_loop_s'] = train_loop_seconds(entries)
    if rec['algorithm'] == 'rekd':
        rec['relation'] = relation_series(entries)
        precision = rec['relation']['relation_precision']
        rec['relation_precision_last'] = precision[-1][1] if precision \
            else None


def _mmpretrain_probe(rec: Dict, item: Dict, args) -> None:
    """``--probe-epochs``: mmpretrain's linear-probe config through
    tools/train.py (augmented images; slow on CPU)."""
    epochs = args.probe_epochs
    # The probe's cosine schedule ends with its last epoch.
    options = [
        f"model.backbone.init_cfg.checkpoint={rec['checkpoint']}",
        f'train_cfg.max_epochs={epochs}', f'param_scheduler.0.T_max={epochs}',
        f'param_scheduler.0.end={epochs}', f'randomness.seed={args.seed}'
    ] + item['probe_options']
    print(
        f"[{item['dataset']} / {rec['variant']}] linear probe "
        f'({epochs} epochs) ...',
        flush=True)
    probe = run_train(item['probe_config'],
                      osp.join(item['work_dir'], 'linear_probe'), options,
                      args.threads, args.timeout)
    rec['probe'] = dict(
        config=item['probe_config'],
        cfg_options=options,
        command=probe['command'],
        wall_s=probe['wall_s'],
        **probe_accuracy(read_scalars(probe['log_dir'])))
    rec['mmpretrain_probe_top1'] = rec['probe']['top1']


def _scores(rec: Dict, who: str, result: Dict, knn_k: int) -> None:
    key = f'k{knn_k}_top1'
    if key not in result:
        raise KeyError(f'no {key} in the kNN result: pass --knn-k 200 or 20 '
                       '(the evaluated neighbour counts)')
    rec.setdefault('knn', {})[who] = result
    rec[f'{who}_knn_top1'] = result[key]
    if 'probe' in result:
        rec[f'{who}_probe_top1'] = result['probe']['top1']


def _run_one(item: Dict, args) -> Dict:
    # Imported here: torch must see OMP_NUM_THREADS, set in main().
    from quality_eval import (evaluate_checkpoint, evaluate_pixels,
                              evaluate_untrained)
    spec = item['spec']
    rec = dict(
        dataset=item['dataset'],
        variant=spec['name'],
        algorithm=spec['algorithm'],
        config=item['config'],
        cfg_options=item['options'],
        work_dir=item['work_dir'],
        train_wall_s=0.0)
    cfg = load_cfg(item['config'], item['options'])
    print(f"[{item['dataset']} / {spec['name']}] scoring ...", flush=True)
    if spec['algorithm'] == 'pixels':
        _scores(rec, 'student', evaluate_pixels(cfg, args), args.knn_k)
        return rec
    if spec['algorithm'] == 'untrained':
        _scores(rec, 'student', evaluate_untrained(cfg, args.seed, args),
                args.knn_k)
        return rec

    run = _train_or_reuse(item, args)
    rec.update(
        train_command=run['command'],
        train_wall_s=run['wall_s'],
        log_dir=run['log_dir'],
        reused=run.get('reused', False))
    rec['checkpoint'] = last_checkpoint(item['work_dir'])
    if run.get('resumed'):
        # Every part of a run split across sessions, in order.
        entries = read_all_scalars(item['work_dir'])
    else:
        entries = read_scalars(run['log_dir'])
    _training_summary(rec, entries)
    _scores(rec, 'student',
            evaluate_checkpoint(cfg, rec['checkpoint'], 'backbone.', args),
            args.knn_k)
    if spec['algorithm'] == 'rekd':
        _scores(
            rec, 'teacher',
            evaluate_checkpoint(cfg, rec['checkpoint'], 'teacher.backbone.',
                                args), args.knn_k)
    if args.probe_epochs > 0 and (args.probe_variants is None
                                  or spec['name'] in args.probe_variants):
        _mmpretrain_probe(rec, item, args)
    return rec


def main(argv: Optional[List[str]] = None) -> Dict:
    args = parse_args(argv)
    os.environ['OMP_NUM_THREADS'] = str(args.threads)
    out = args.out or osp.join(args.work_root, 'quality.json')
    try:
        plan = _plan(args)
    except (ValueError, FileNotFoundError) as err:
        sys.exit(f'benchmarks/quality.py: {err}')
    if args.dry_run:
        for item in plan:
            print(
                shlex.join([
                    'python', 'tools/train.py', item['config'], '--work-dir',
                    item['work_dir'], '--cfg-options', *item['options']
                ]))
        return dict(plan=plan)

    import torch
    torch.set_num_threads(args.threads)
    machine = machine_info()
    results = dict(
        benchmark='quality',
        command=command_line(),
        git_commit=machine.get('git_commit'),
        git_dirty=git_dirty(),
        machine=machine,
        settings=dict(
            datasets=args.datasets,
            variants=args.variants,
            regime=args.regime,
            feature_probe=args.feature_probe,
            iters=args.iters,
            seed=args.seed,
            threads=args.threads,
            knn_k=args.knn_k,
            knn_max_train=args.knn_max_train,
            knn_max_val=args.knn_max_val,
            probe_epochs=args.probe_epochs,
            probe_variants=args.probe_variants or args.variants,
            miner_init_iter=args.miner_init_iter,
            extra_cfg_options=args.extra_cfg_options,
            rekd_cfg_options=args.rekd_cfg_options,
            probe_cfg_options=args.probe_cfg_options,
            work_root=osp.abspath(args.work_root)),
        records=[])
    results['commands'] = [results['command']]
    previous_wall_s = 0.
    if args.append and osp.isfile(out):
        try:
            previous_wall_s = _merge_previous(results, out, plan)
        except ValueError as err:
            sys.exit(f'benchmarks/quality.py: {err}')
    start = time.perf_counter() - previous_wall_s
    paths = {}
    for item in plan:
        results['records'].append(_run_one(item, args))
        # Deltas against the same data set's MoCo v2, whatever the order.
        baselines = {
            r['dataset']: r['student_knn_top1']
            for r in results['records'] if r['variant'] == 'mocov2'
        }
        for r in results['records']:
            base = baselines.get(r['dataset'])
            r['delta_vs_mocov2'] = None if base is None else (
                r['student_knn_top1'] - base)
        results['total_wall_s'] = time.perf_counter() - start
        # Rewritten after every run: a long benchmark keeps what it did.
        paths = write_results(results, out)
    print(build_markdown(results))
    print('\n'.join(f'{k}: {v}' for k, v in paths.items()))
    return results


if __name__ == '__main__':
    main()
