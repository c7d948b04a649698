# Copyright (c) rekd_mm contributors. All rights reserved.
"""One-command GPU check of ReKD at the ImageNet config's shapes.

On one GPU, with synthetic data and AMP on, at the shapes of
``configs/rekd_mbv2_r50_200e.py`` (MobileNetV2 student, ResNet-50 teacher,
224 px, batch 32 per GPU, queue 65536, K from the config), this measures:

- seconds per training step of MoCo v2 with the student, MoCo v2 with the
  teacher and ReKD (timed round-robin in one process, means over the timed
  steps: ReKD's periodic queue refresh is included at the config's
  interval), and their ratio ReKD / (student + teacher), target <= 1.05;
- peak GPU memory of each variant (model, optimiser state and two steps);
- the share of relation mining + bank update in a ReKD step (the step
  re-played phase by phase, ``common.rekd_step_by_step``, with
  ``torch.cuda.synchronize`` between phases), target <= 3 %;
- host synchronisations per ReKD step: operations counted by
  ``rekd_mm.utils.host_syncs.HostSyncCounter`` in ``ReKD.loss`` (target
  <= 2) and in the whole step (AMP's loss scaler adds its own), and, on CUDA,
  the synchronising calls reported by ``torch.cuda.set_sync_debug_mode``.

It writes a JSON file and a Markdown table next to it (default
``benchmarks/results/gpu_check_in1k-synthetic.json``) and exits with status 1
when a target is missed. The prototype bank is prepared as in
``train_speed.py`` (queues full, Θ = -1 by default: every anchor and slot
assigned, the miner's worst case).

Examples::

    # On one GPU (< 5 min):
    python benchmarks/gpu_check.py
    # The same code path at tiny shapes, on CPU (what the tests run):
    python benchmarks/gpu_check.py --smoke --out /tmp/gpu_check_smoke.json
"""
import os

os.environ.setdefault('OMP_NUM_THREADS', '1')

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from collections import defaultdict  # noqa: E402
from typing import Dict, List, Optional  # noqa: E402

import torch  # noqa: E402

# isort: off
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (  # noqa: E402
    PHASE_GROUPS, PhaseTimer, build_config, build_inputs, build_model,
    build_optim_wrapper, command_line, init_scope, machine_info,
    markdown_table, median, memory_end, memory_start, prepare_bank,
    rekd_step_by_step, sync, train_step, write_results)
# isort: on

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIG = os.path.join(REPO, 'configs', 'rekd_mbv2_r50_200e.py')
DEFAULT_OUT = os.path.join(REPO, 'benchmarks', 'results',
                           'gpu_check_in1k-synthetic.json')
VARIANTS = ('moco_student', 'moco_teacher', 'rekd')
TARGETS = dict(
    rekd_over_student_plus_teacher=1.05,
    mining_plus_bank_update_share=0.03,
    host_syncs_per_rekd_loss=2)
# Phases of rekd_step_by_step that are the miner's own work.
MINER_GROUPS = ('relation mining', 'bank update')


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='ReKD on one GPU at ImageNet shapes: speed vs MoCo v2, '
        'memory, miner share, host synchronisations')
    parser.add_argument('--config', default=DEFAULT_CONFIG)
    parser.add_argument('--batch-size', type=int, default=32)
    parser.add_argument('--img-size', type=int, default=224)
    parser.add_argument('--queue-len', type=int, default=None)
    parser.add_argument('--num-prototypes', type=int, default=None)
    parser.add_argument(
        '--iters',
        type=int,
        default=20,
        help='timed steps per variant (a multiple of the '
        'refresh interval keeps the amortisation exact)')
    parser.add_argument('--warmup', type=int, default=5)
    parser.add_argument('--breakdown-iters', type=int, default=10)
    parser.add_argument(
        '--amp-dtype',
        default='float16',
        choices=('float16', 'bfloat16', 'none'))
    parser.add_argument('--miner-threshold', type=float, default=-1.0)
    parser.add_argument(
        '--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument(
        '--smoke',
        action='store_true',
        help='tiny shapes (32 px, batch 4, queue 64, K 8, 2 timed steps): '
        'checks the code path, e.g. on CPU; measures nothing meaningful')
    parser.add_argument(
        '--out',
        default=None,
        help=f'JSON result file (default {DEFAULT_OUT}; '
        'none with --smoke)')
    args = parser.parse_args(argv)
    if args.smoke:
        args.batch_size, args.img_size = 4, 32
        args.queue_len = args.queue_len or 64
        args.num_prototypes = args.num_prototypes or 8
        args.iters, args.warmup, args.breakdown_iters = 2, 1, 2
    elif args.out is None:
        args.out = DEFAULT_OUT
    if args.iters < 1 or args.warmup < 0 or args.breakdown_iters < 1:
        parser.error('--iters and --breakdown-iters must be >= 1')
    args.cfg_options, args.synthetic = None, True
    return args


def _amp_config(cfg, args) -> bool:
    """Train under AMP (``AmpOptimWrapper``) where the device has it."""
    use_amp = args.amp_dtype != 'none' and args.device.startswith('cuda')
    if use_amp:
        wrapper = dict(cfg.optim_wrapper)
        wrapper.update(
            type='AmpOptimWrapper', dtype=args.amp_dtype, loss_scale='dynamic')
        cfg.optim_wrapper = wrapper
    return use_amp


def _build(cfg, name: str, args) -> tuple:
    model = build_model(cfg, name).to(args.device)
    model.train()
    optim_wrapper = build_optim_wrapper(model, cfg, args.device)
    if name == 'rekd':
        prepare_bank(model, args.miner_threshold, args.seed)
    return model, optim_wrapper


def count_host_syncs(model, optim_wrapper, inputs, samples,
                     device: str) -> Dict:
    """Host synchronisations of one ReKD training step."""
    from rekd_mm.utils.host_syncs import HostSyncCounter
    on_cpu = device == 'cpu'
    with optim_wrapper.optim_context(model):
        with HostSyncCounter(cpu_as_device=on_cpu) as in_loss:
            losses = model.loss(inputs, samples)
    with HostSyncCounter(cpu_as_device=on_cpu) as in_update:
        parsed, _ = model.parse_losses(losses)
        optim_wrapper.update_params(parsed)
    out = dict(
        loss=in_loss.count,
        loss_ops=in_loss.ops,
        optimizer_and_parse=in_update.count,
        optimizer_and_parse_ops=in_update.ops)
    if device.startswith('cuda'):
        # The CUDA runtime's own view: every synchronising call warns.
        sync(device)
        torch.cuda.set_sync_debug_mode('warn')
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter('always')
                train_step(model, optim_wrapper, inputs, samples)
                sync(device)
        finally:
            torch.cuda.set_sync_debug_mode('default')
        out['cuda_sync_debug_warnings_per_step'] = sum(
            'synchroniz' in str(w.message) for w in caught)
    return out


def run(args: argparse.Namespace) -> Dict:
    torch.manual_seed(args.seed)
    init_scope()
    cfg = build_config(args)
    use_amp = _amp_config(cfg, args)
    inputs, samples, input_info = build_inputs(cfg, args, args.device)

    # Peak memory of each variant over its build and warm-up steps: what
    # was allocated before (the other variants) is subtracted.
    models, memory = {}, {}
    for name in VARIANTS:
        mem = memory_start(args.device)
        model, optim_wrapper = _build(cfg, name, args)
        for _ in range(max(2, args.warmup)):
            train_step(model, optim_wrapper, inputs, samples)
        sync(args.device)
        memory[name] = memory_end(args.device, mem)
        models[name] = (model, optim_wrapper)

    times = defaultdict(list)
    for rnd in range(args.iters):
        shift = rnd % len(VARIANTS)
        for name in VARIANTS[shift:] + VARIANTS[:shift]:
            model, optim_wrapper = models[name]
            sync(args.device)
            start = time.perf_counter()
            train_step(model, optim_wrapper, inputs, samples)
            sync(args.device)
            times[name].append(time.perf_counter() - start)

    rekd, rekd_optim = models['rekd']
    timer, phases = PhaseTimer(args.device), defaultdict(float)
    for _ in range(args.breakdown_iters):
        rekd_step_by_step(rekd, rekd_optim, inputs, samples, timer)
        for phase, seconds in timer.times.items():
            phases[phase] += seconds / args.breakdown_iters
    syncs = count_host_syncs(rekd, rekd_optim, inputs, samples, args.device)

    mean = {k: sum(v) / len(v) for k, v in times.items()}
    groups = {
        group: sum(phases.get(p, 0.0) for p in members)
        for group, members in PHASE_GROUPS.items()
    }
    total = sum(phases.values())
    summary = dict(
        rekd_over_student_plus_teacher=mean['rekd'] /
        (mean['moco_student'] + mean['moco_teacher']),
        mining_plus_bank_update_share=sum(groups[g]
                                          for g in MINER_GROUPS) / total,
        host_syncs_per_rekd_loss=syncs['loss'])
    summary['targets'] = TARGETS
    summary['met'] = {k: summary[k] <= v for k, v in TARGETS.items()}
    return dict(
        benchmark='gpu_check',
        config=args.config,
        command=command_line(),
        machine=machine_info(),
        settings=dict(
            device=args.device,
            amp=use_amp,
            amp_dtype=args.amp_dtype if use_amp else None,
            batch_size=args.batch_size,
            img_size=args.img_size,
            queue_len=rekd.queue_len,
            num_prototypes=rekd.miner.num_prototypes,
            miner_threshold=rekd.miner.threshold,
            queue_refresh_interval=rekd.queue_refresh_interval,
            iters=args.iters,
            warmup=args.warmup,
            breakdown_iters=args.breakdown_iters,
            smoke=args.smoke,
            inputs=input_info),
        variants={
            name: dict(
                step_seconds=times[name],
                mean_step_seconds=mean[name],
                median_step_seconds=median(times[name]),
                memory=memory[name])
            for name in VARIANTS
        },
        breakdown=dict(
            phase_seconds=dict(phases),
            groups_seconds=groups,
            groups_share={k: v / total
                          for k, v in groups.items()}),
        host_syncs=syncs,
        summary=summary)


def to_markdown(results: Dict) -> str:
    st, var, summ = (results['settings'], results['variants'],
                     results['summary'])
    machine = results['machine']
    peak_key = ('cuda_peak_over_before_mib' if st['device'].startswith('cuda')
                else 'peak_rss_over_before_mib')
    lines = [
        '# GPU check: ReKD vs MoCo v2 at ' +
        os.path.basename(results['config']) + ' shapes', '',
        f"Command: `{results['command']}`", '', f"Device {st['device']}" +
        (f" ({machine.get('cuda_device')})" if machine.get('cuda_device') else
         '') + f", torch {machine['torch']}, AMP "
        f"{st['amp_dtype'] if st['amp'] else 'off'}, batch "
        f"{st['batch_size']}, {st['img_size']} px, L={st['queue_len']}, "
        f"K={st['num_prototypes']}, Θ={st['miner_threshold']}, refresh "
        f"every {st['queue_refresh_interval']}; means over {st['iters']} "
        f"steps after {st['warmup']} warm-up" +
        (' (SMOKE: tiny shapes, numbers meaningless)' if st['smoke'] else '') +
        '.', '',
        markdown_table([
            'variant', 's/step (mean)', 's/step (median)',
            'peak memory MiB (own)'
        ], [[
            name, v['mean_step_seconds'], v['median_step_seconds'],
            v['memory'].get(peak_key)
        ] for name, v in var.items()]), '',
        markdown_table(
            ['check', 'measured', 'target', 'met'],
            [[k, summ[k], f'<= {t}', 'yes' if summ['met'][k] else 'NO']
             for k, t in summ['targets'].items()]), '',
        'Host synchronisations in one ReKD step: '
        f"{results['host_syncs']['loss']} in ReKD.loss "
        f"({', '.join(results['host_syncs']['loss_ops']) or 'none'}), "
        f"{results['host_syncs']['optimizer_and_parse']} in parse_losses + "
        'optimiser step' +
        (f"; CUDA sync-debug warnings over the whole step: "
         f"{results['host_syncs']['cuda_sync_debug_warnings_per_step']}" if
         'cuda_sync_debug_warnings_per_step' in results['host_syncs'] else '')
        + '.', '',
        markdown_table(
            ['phase group', 'share of a ReKD step %'],
            [[k, v * 100]
             for k, v in results['breakdown']['groups_share'].items()]), ''
    ]
    return '\n'.join(lines)


def main(argv: Optional[List[str]] = None) -> Dict:
    args = parse_args(argv)
    results = run(args)
    text = to_markdown(results)
    print(text)
    write_results(args.out, results, text)
    if not args.smoke and not all(results['summary']['met'].values()):
        sys.exit(1)
    return results


if __name__ == '__main__':
    main()
