# Copyright (c) rekd_mm contributors. All rights reserved.
"""What ReKD costs per training step, and where the time goes.

Measured in one run, on the same inputs, each variant in a fresh subprocess
(so that peak memory is per variant: the RSS high-water mark of a process is
monotone):

- ``moco_student``: mmpretrain's ``MoCo`` with the config's student
  backbone/neck (MoCo v2 alone);
- ``moco_teacher``: ``MoCo`` with the config's teacher backbone/neck;
- ``rekd``: the config's ``ReKD`` with the prototype bank initialised and the
  queues full, so that the mining path is active (see ``--miner-threshold``);
  the full refresh of the cached queue assignments is timed separately and
  amortised over ``queue_refresh_interval`` iterations;
- ``rekd_exact``: the same with the queue re-assigned every iteration
  (``queue_refresh_interval=1``), a check of that amortisation;
- ``rekd_breakdown``: ReKD's training step re-played phase by phase with the
  model's own submodules and methods (see :func:`rekd_step_by_step`), a
  timer between phases (and ``torch.cuda.synchronize`` on CUDA). The two
  losses have disjoint graphs, so their backward passes are timed apart;
- ``loading`` (real data only): the config's ``train_dataloader`` as
  configured (workers included); the wait in ``next()`` is timed apart from
  the step.

A training step is forward, backward and the optimiser step, as
``BaseModel.train_step`` does it, on inputs pre-processed once. Times are
medians over ``--iters`` iterations after ``--warmup``.

``--staleness-iters N`` additionally trains the config for real (mmengine
``Runner``) for N iterations after the bank's initialisation without ever
refreshing the cached queue assignments, and after every iteration compares
them with an exact re-assignment: the error that a refresh interval buys.

Examples::

    # CPU demo config, real Fashion-MNIST batches, plus the staleness study
    OMP_NUM_THREADS=1 python benchmarks/train_speed.py \\
        configs/rekd_mobilenet-v2-t-resnet18_1xb64-400i_fashion-mnist.py \\
        --iters 20 --staleness-iters 200 \\
        --out benchmarks/results/train_speed_fashion-mnist.json
    # ImageNet shapes: 224 px, queue 65536, K from the config; batch 8 on CPU
    OMP_NUM_THREADS=1 python benchmarks/train_speed.py \\
        configs/rekd_mbv2_r50_200e.py --synthetic --batch-size 8 \\
        --iters 8 --warmup 2 --miner-batch 256 \\
        --out benchmarks/results/train_speed_in1k-synthetic.json
"""
import os

# One thread unless asked otherwise, set before torch is imported: other
# processes share the cores and oversubscription makes timings meaningless.
os.environ.setdefault('OMP_NUM_THREADS', '1')

import argparse  # noqa: E402
import copy  # noqa: E402
import functools  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections import defaultdict  # noqa: E402
from typing import Dict, List, Optional  # noqa: E402

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

# isort: off
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (  # noqa: E402
    PHASE_GROUPS, PhaseTimer, build_config, build_inputs, build_model,
    build_optim_wrapper, command_line, init_scope, machine_info,
    markdown_table, median, memory_end, memory_start, prepare_bank,
    rekd_step_by_step, sync, train_step, write_results)
# isort: on

__all__ = [
    'build_config', 'build_inputs', 'build_model', 'prepare_bank',
    'train_step', 'rekd_step_by_step', 'PHASE_GROUPS', 'main'
]

VARIANTS = ('moco_student', 'moco_teacher', 'rekd', 'rekd_exact',
            'rekd_breakdown', 'loading')


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Training-step cost of ReKD vs MoCo v2 student/teacher')
    parser.add_argument('config', help='ReKD config file')
    parser.add_argument(
        '--iters', type=int, default=10, help='timed iterations')
    parser.add_argument(
        '--warmup', type=int, default=3, help='untimed iterations first')
    parser.add_argument(
        '--batch-size',
        type=int,
        default=None,
        help='override train_dataloader.batch_size')
    parser.add_argument(
        '--img-size',
        type=int,
        default=224,
        help='input size with --synthetic (ignored otherwise)')
    parser.add_argument(
        '--synthetic',
        action='store_true',
        help='random inputs of --img-size instead of the config\'s data '
        '(e.g. ImageNet shapes without ImageNet)')
    parser.add_argument(
        '--queue-len', type=int, default=None, help='override queue_len')
    parser.add_argument(
        '--num-prototypes',
        type=int,
        default=None,
        help='override model.miner.num_prototypes (K)')
    parser.add_argument(
        '--miner-threshold',
        type=float,
        default=-1.0,
        help='Θ used for the timed ReKD steps. The queues hold random keys '
        'in the benchmark, so the configured Θ would assign almost nothing; '
        'the default -1 assigns every anchor and slot: the mining path does '
        'its maximal work (worst case)')
    parser.add_argument(
        '--refresh-intervals',
        type=int,
        nargs='+',
        default=[1, 10, 100],
        help='queue_refresh_interval values to report the amortised cost of')
    parser.add_argument(
        '--variants',
        nargs='+',
        choices=VARIANTS,
        default=None,
        help='variants to run (default: all that apply)')
    parser.add_argument(
        '--staleness-iters',
        type=int,
        default=0,
        help='if > 0, train the config this many iterations after the '
        'bank\'s initialisation and measure the drift of the cached queue '
        'assignments (real data only)')
    parser.add_argument(
        '--miner-batch',
        type=int,
        default=0,
        help='if > 0, also time the miner\'s operations alone (no '
        'backbone) for a global batch of this size, e.g. 256 for the '
        'ImageNet recipe whose full step is too slow to time on CPU')
    parser.add_argument(
        '--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--threads', type=int, default=1)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        default=None,
        help='config overrides, key=value (mmengine DictAction)')
    parser.add_argument(
        '--out',
        default=None,
        help='JSON result file (a Markdown summary is written next to it)')
    parser.add_argument(
        '--in-process',
        action='store_true',
        help='run the measurements in this process instead of fresh '
        'subprocesses (quicker; peak memory then includes what earlier '
        'measurements left allocated)')
    parser.add_argument(
        '--timeout',
        type=int,
        default=3600,
        help='seconds allowed to each variant subprocess')
    # Internal: the driver runs each measurement in a worker subprocess.
    parser.add_argument(
        '--worker',
        choices=('timing', 'memory', 'loading', 'staleness', 'miner'),
        default=None,
        help=argparse.SUPPRESS)
    parser.add_argument(
        '--timed-variants', nargs='+', default=None, help=argparse.SUPPRESS)
    parser.add_argument(
        '--memory-variant', default=None, help=argparse.SUPPRESS)
    parser.add_argument('--worker-out', default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.iters < 1 or args.warmup < 0:
        parser.error('--iters must be >= 1 and --warmup >= 0')
    return args


# The building blocks live in common.py (shared with gpu_check.py).
_init_scope = init_scope
_sync = sync
_memory_start = memory_start
_memory_end = memory_end


def _time_refresh(model: nn.Module, device: str, reps: int = 3) -> float:
    """Median seconds of one full re-assignment of the teacher queue."""
    model.refresh_queue_assign()  # warm-up
    times = []
    for _ in range(reps):
        _sync(device)
        start = time.perf_counter()
        model.refresh_queue_assign()
        _sync(device)
        times.append(time.perf_counter() - start)
    return median(times)


TIMED = ('moco_student', 'moco_teacher', 'rekd', 'rekd_exact',
         'rekd_breakdown')


def run_worker(args: argparse.Namespace) -> Dict:
    """Entry point of a worker subprocess."""
    torch.set_num_threads(args.threads)
    _init_scope()
    torch.manual_seed(args.seed)
    cfg = build_config(args)
    if args.worker == 'loading':
        return run_loading(cfg, args)
    if args.worker == 'staleness':
        return run_staleness(cfg, args)
    if args.worker == 'memory':
        return run_memory(cfg, args, args.memory_variant)
    if args.worker == 'miner':
        return run_miner_only(cfg, args)
    return run_timing(cfg, args, args.timed_variants)


def _rekd_model(cfg, args: argparse.Namespace, device: str):
    """A ReKD model with its bank prepared and the refresh timed; the
    refresh is then kept out of the timed steps (it is amortised)."""
    model = build_model(cfg, 'rekd').to(device)
    model.train()
    optim_wrapper = build_optim_wrapper(model, cfg, device)
    prepare_bank(model, args.miner_threshold, args.seed)
    info = dict(
        num_prototypes=model.miner.num_prototypes,
        queue_len=model.queue_len,
        miner_threshold=model.miner.threshold,
        config_refresh_interval=model.queue_refresh_interval,
        refresh_seconds=_time_refresh(model, device))
    model.queue_refresh_interval = 10**9
    return model, optim_wrapper, info


def run_timing(cfg, args: argparse.Namespace, names: List[str]) -> Dict:
    """Time the variants round-robin in one process.

    The machine may be shared: interleaving the variants (in a rotating
    order) exposes them to the same background load, so their ratios stay
    meaningful even when absolute times drift.
    """
    device = args.device
    inputs, samples, input_info = build_inputs(cfg, args, device)
    steps, extra = {}, {}
    if any(name.startswith('rekd') for name in names):
        rekd, rekd_optim, rekd_info = _rekd_model(cfg, args, device)
    timer = PhaseTimer(device)
    for name in names:
        if name.startswith('moco'):
            model = build_model(cfg, name).to(device)
            model.train()
            steps[name] = functools.partial(
                train_step, model, build_optim_wrapper(model, cfg, device),
                inputs, samples)
            continue
        extra[name] = dict(rekd_info)
        if name == 'rekd':
            steps[name] = functools.partial(train_step, rekd, rekd_optim,
                                            inputs, samples)
        elif name == 'rekd_exact':

            def exact_step():
                rekd.queue_refresh_interval = 1  # re-assign every step
                try:
                    return train_step(rekd, rekd_optim, inputs, samples)
                finally:
                    rekd.queue_refresh_interval = 10**9

            steps[name] = exact_step
        else:
            steps[name] = functools.partial(rekd_step_by_step, rekd,
                                            rekd_optim, inputs, samples, timer)

    times, phases, last = defaultdict(list), defaultdict(list), {}
    # CPU time of this process (user, system) and minor page faults per
    # step: wall time above CPU time means the core was shared; system time
    # and page faults show what the allocator costs.
    usage = defaultdict(lambda: defaultdict(list))
    for rnd in range(args.warmup + args.iters):
        shift = rnd % len(names)
        for name in names[shift:] + names[:shift]:
            _sync(device)
            before = resource.getrusage(resource.RUSAGE_SELF)
            start = time.perf_counter()
            last[name] = steps[name]()
            _sync(device)
            if rnd < args.warmup:
                continue
            times[name].append(time.perf_counter() - start)
            after = resource.getrusage(resource.RUSAGE_SELF)
            usage[name]['user_seconds'].append(after.ru_utime -
                                               before.ru_utime)
            usage[name]['system_seconds'].append(after.ru_stime -
                                                 before.ru_stime)
            usage[name]['minor_page_faults'].append(after.ru_minflt -
                                                    before.ru_minflt)
            if name == 'rekd_breakdown':
                for phase, seconds in timer.times.items():
                    phases[phase].append(seconds)

    out = {}
    for name in names:
        out[name] = dict(
            variant=name,
            inputs=input_info,
            device=device,
            step_seconds=times[name],
            median_step_seconds=median(times[name]),
            rusage_medians={k: median(v)
                            for k, v in usage[name].items()},
            cpu_seconds=[
                u + y for u, y in zip(usage[name]['user_seconds'], usage[name]
                                      ['system_seconds'])
            ],
            **extra.get(name, {}))
        if name.startswith('rekd'):
            out[name]['relation_pos_per_anchor'] = float(
                last[name]['relation_pos_per_anchor'])
    if 'rekd_breakdown' in out:
        out['rekd_breakdown']['phase_seconds'] = {
            k: median(v)
            for k, v in phases.items()
        }
    return out


def run_memory(cfg, args: argparse.Namespace, name: str) -> Dict:
    """Peak memory of one variant's training, alone in this process.

    The peak is reset after the model and inputs are built and covers two
    training steps: activations, gradients, the optimiser's state and what
    the allocator keeps.
    """
    device = args.device
    inputs, samples, _ = build_inputs(cfg, args, device)
    if name.startswith('rekd'):
        model, optim_wrapper, _ = _rekd_model(cfg, args, device)
    else:
        model = build_model(cfg, name).to(device)
        model.train()
        optim_wrapper = build_optim_wrapper(model, cfg, device)
    mem = _memory_start(device)
    for _ in range(2):
        train_step(model, optim_wrapper, inputs, samples)
    _sync(device)
    return _memory_end(device, mem)


def run_miner_only(cfg, args: argparse.Namespace) -> Dict:
    """The miner's per-step operations alone, for ``--miner-batch`` random
    keys, at the config's L, K and D (medians over ``--iters``).

    ``relation_loss_extra`` is the masked relation loss (forward and
    backward) minus the plain InfoNCE of the same queries: what the mined
    positives add to the student's loss.
    """
    device, batch = args.device, args.miner_batch
    model, _, info = _rekd_model(cfg, args, device)
    if model.queue_len % batch:
        raise ValueError(f'--miner-batch {batch} does not divide queue_len '
                         f'{model.queue_len}')
    gen = torch.Generator().manual_seed(args.seed)

    def keys(dim):
        keys = torch.randn(batch, dim, generator=gen)
        return F.normalize(keys, dim=1).to(device)

    labels = torch.randint(1000, (batch, ), generator=gen).to(device)
    phases = defaultdict(list)

    def timed(name, fn):
        _sync(device)
        start = time.perf_counter()
        result = fn()
        _sync(device)
        phases[name].append(time.perf_counter() - start)
        return result

    def relation_loss(q, k, queue, mask):
        loss = model.head.loss(q, k, queue, mask)
        loss.backward()
        return loss

    for _ in range(args.warmup + args.iters):
        # Teacher keys in the teacher's dimension (queue, bank), student
        # keys and queries in the student's.
        k_t, k_s = keys(model.teacher_feat_dim), keys(model.feat_dim)
        q_s = keys(model.feat_dim).requires_grad_()
        queue = timed('queue_read', lambda: model.queue.clone().detach())
        with torch.no_grad():

            def mine():
                assign, _ = model.miner.assign(k_t)
                mask = assign[:, None] == model.queue_assign[None]
                mask &= (assign >= 0)[:, None]
                return mask, assign

            mask, assign = timed('mining_assign_and_mask', mine)
        timed('infonce_fwd_bwd', lambda: relation_loss(q_s, k_s, queue, None))
        timed('relation_loss_fwd_bwd',
              lambda: relation_loss(q_s, k_s, queue, mask))
        timed('relation_stats',
              lambda: model._relation_stats(mask, assign, labels))

        all_assign = timed('bank_update', lambda: model.update_bank(k_t))
        timed('enqueue',
              lambda: model._dequeue_and_enqueue(k_s, k_t, all_assign, labels))
    medians = {
        name: median(values[args.warmup:])
        for name, values in phases.items()
    }
    medians['relation_loss_extra'] = (
        medians['relation_loss_fwd_bwd'] - medians['infonce_fwd_bwd'])
    return dict(variant='miner', batch=batch, phase_seconds=medians, **info)


def run_loading(cfg, args: argparse.Namespace) -> Dict:
    """Data-loading wait vs compute with the config's own dataloader."""
    from mmengine.runner import Runner
    if args.synthetic:
        raise ValueError('the loading variant needs real data')
    device = args.device
    model = build_model(cfg, 'loading').to(device)
    model.train()
    prepare_bank(model, args.miner_threshold, args.seed)
    model.queue_refresh_interval = 10**9
    optim_wrapper = build_optim_wrapper(model, cfg, device)
    loader = Runner.build_dataloader(
        copy.deepcopy(cfg.train_dataloader), seed=args.seed)
    batches = iter(loader)
    waits, computes = [], []
    for i in range(args.warmup + args.iters):
        start = time.perf_counter()
        batch = next(batches)
        got = time.perf_counter()
        data = model.data_preprocessor(batch, True)
        train_step(model, optim_wrapper, data['inputs'], data['data_samples'])
        _sync(device)
        done = time.perf_counter()
        if i >= args.warmup:
            waits.append(got - start)
            computes.append(done - got)
    # The loader alone, without the model competing for the cores: how fast
    # the workers can produce batches at all.
    alone = []
    for _ in range(args.iters):
        start = time.perf_counter()
        next(batches)
        alone.append(time.perf_counter() - start)
    loader_cfg = cfg.train_dataloader
    return dict(
        variant='loading',
        num_workers=loader_cfg.get('num_workers', 0),
        batch_size=loader_cfg.batch_size,
        wait_seconds=waits,
        compute_seconds=computes,
        median_wait_seconds=median(waits),
        median_compute_seconds=median(computes),
        mean_wait_seconds=sum(waits) / len(waits),
        mean_compute_seconds=sum(computes) / len(computes),
        loader_alone_median_seconds=median(alone))


def run_staleness(cfg, args: argparse.Namespace) -> Dict:
    """Train for real and record how far the cached queue assignments drift
    from an exact re-assignment, iteration by iteration."""
    from mmengine.hooks import Hook
    from mmengine.runner import Runner
    from mmpretrain.utils import get_ori_model

    if args.synthetic:
        raise ValueError('the staleness study trains on real data')
    hooks = [
        h for h in cfg.get('custom_hooks', [])
        if h.get('type') == 'RelationMinerHook'
    ]
    if not hooks or hooks[0].get('init_iter') is None:
        raise ValueError(f'{args.config}: the staleness study needs a '
                         'RelationMinerHook with init_iter in custom_hooks')
    init_iter = hooks[0]['init_iter']
    records = []

    class StalenessHook(Hook):
        priority = 'LOWEST'

        @torch.no_grad()
        def after_train_iter(self,
                             runner,
                             batch_idx,
                             data_batch=None,
                             outputs=None):
            model = get_ori_model(runner.model)
            if not model.miner.is_initialized:
                return
            count = int(model.queue_count)
            keys = model.teacher_queue[:, :count].t()
            exact, _ = model.miner.assign(keys)
            cached = model.queue_assign[:count]
            batch = runner.train_dataloader.batch_size
            ptr = int(model.queue_ptr)
            anchors = (torch.arange(ptr - batch, ptr) % model.queue_len)
            anchor_assign = exact[anchors]
            valid = (anchor_assign >= 0)[:, None]
            pos_exact = (anchor_assign[:, None] == exact[None]) & valid
            pos_cached = (anchor_assign[:, None] == cached[None]) & valid
            num_exact = int(pos_exact.sum())
            records.append(
                dict(
                    iter=runner.iter + 1,
                    age=int(model.queue_assign_age),
                    slot_mismatch=float((exact != cached).float().mean()),
                    pair_error=float(
                        (pos_exact ^ pos_cached).sum()) / max(1, num_exact),
                    exact_pairs_per_anchor=num_exact / batch,
                    anchor_assigned_ratio=float(
                        (anchor_assign >= 0).float().mean())))

    cfg = copy.deepcopy(cfg)
    cfg.work_dir = tempfile.mkdtemp(prefix='rekd_staleness_')
    cfg.train_cfg.max_iters = init_iter + args.staleness_iters
    cfg.model.setdefault('miner', {})
    cfg.model.miner.queue_refresh_interval = 10**9  # never refresh
    cfg.default_hooks.checkpoint = None
    cfg.log_level = 'WARNING'
    cfg.randomness = dict(seed=args.seed)
    runner = Runner.from_cfg(cfg)
    runner.register_hook(StalenessHook())
    start = time.perf_counter()
    try:
        runner.train()
    finally:
        shutil.rmtree(cfg.work_dir, ignore_errors=True)
    return dict(
        variant='staleness',
        init_iter=init_iter,
        iters_after_init=args.staleness_iters,
        train_seconds=time.perf_counter() - start,
        batch_size=cfg.train_dataloader.batch_size,
        queue_len=cfg.model.queue_len,
        num_prototypes=cfg.model.miner.num_prototypes,
        threshold=cfg.model.miner.get('threshold'),
        records=records)


# --------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------
def _run_worker_subprocess(args: argparse.Namespace, argv: List[str],
                           worker: List[str]) -> Dict:
    """Run ``worker`` (extra arguments) in a fresh interpreter."""
    if args.in_process:
        start = time.perf_counter()
        result = run_worker(parse_args(argv + worker))
        result['subprocess_seconds'] = time.perf_counter() - start
        return result
    with tempfile.TemporaryDirectory() as tmp:
        out_path = os.path.join(tmp, 'out.json')
        cmd = [sys.executable, os.path.abspath(__file__)
               ] + argv + worker + ['--worker-out', out_path]
        start = time.perf_counter()
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=args.timeout)
        if proc.returncode != 0:
            raise RuntimeError(f'worker {worker} failed (exit '
                               f'{proc.returncode}):\n{proc.stderr[-4000:]}')
        with open(out_path) as f:
            result = json.load(f)
        if isinstance(result, dict):
            result['subprocess_seconds'] = time.perf_counter() - start
        return result


def summarise(results: Dict) -> Dict:
    """Ratios against the targets of docs/performance.md."""
    var = results['variants']
    summary = {}
    if {'moco_student', 'moco_teacher', 'rekd'} <= set(var):
        a = var['moco_student']['median_step_seconds']
        b = var['moco_teacher']['median_step_seconds']
        rekd = var['rekd']
        interval = rekd['config_refresh_interval']
        c = rekd['median_step_seconds'] + rekd['refresh_seconds'] / interval
        summary.update(
            moco_student_seconds=a,
            moco_teacher_seconds=b,
            rekd_seconds_amortised=c,
            rekd_over_student_plus_teacher=c / (a + b),
            target_rekd_over_student_plus_teacher=1.05,
            refresh_seconds=rekd['refresh_seconds'],
            refresh_cost_share={
                str(i): rekd['refresh_seconds'] / i / c
                for i in sorted(
                    set(results['settings']['refresh_intervals'] + [interval]))
            })
        # Per round (the variants of a round ran back to back, under the same
        # background load): a ratio less exposed to load drift.
        per_round = [(r + rekd['refresh_seconds'] / interval) / (s + t)
                     for r, s, t in zip(rekd['step_seconds'],
                                        var['moco_student']['step_seconds'],
                                        var['moco_teacher']['step_seconds'])]
        summary['rekd_over_student_plus_teacher_per_round'] = dict(
            median=median(per_round),
            q25=_quantile(per_round, 0.25),
            q75=_quantile(per_round, 0.75),
            values=per_round)
        if all('cpu_seconds' in var[n]
               for n in ('rekd', 'moco_student', 'moco_teacher')):
            # Process CPU time: blind to time slices lost to other
            # processes on a shared machine (not to cache contention).
            summary['rekd_over_student_plus_teacher_cpu_time'] = (
                (median(rekd['cpu_seconds']) +
                 rekd['refresh_seconds'] / interval) /
                (median(var['moco_student']['cpu_seconds']) +
                 median(var['moco_teacher']['cpu_seconds'])))
        if 'rekd_exact' in var:
            summary['rekd_exact_seconds'] = var['rekd_exact'][
                'median_step_seconds']
    if 'rekd_breakdown' in var:
        br = var['rekd_breakdown']
        phases = dict(br['phase_seconds'])
        interval = br['config_refresh_interval']
        refresh = var.get('rekd', {}).get('refresh_seconds')
        if refresh is not None:
            # The timed breakdown never refreshes; charge the amortised
            # refresh at the config's interval.
            phases['mining_refresh'] = (
                phases.get('mining_refresh', 0.0) + refresh / interval)
        total = sum(phases.values())
        groups = {
            name: sum(phases.get(p, 0.0) for p in members)
            for name, members in PHASE_GROUPS.items()
        }
        summary.update(
            breakdown_total_seconds=total,
            breakdown_step_median_seconds=median(br['step_seconds']),
            breakdown_groups_seconds=groups,
            breakdown_groups_share={k: v / total
                                    for k, v in groups.items()},
            mining_plus_bank_update_share=(groups['relation mining'] +
                                           groups['bank update']) / total,
            target_mining_plus_bank_update_share=0.03,
            rekd_extra_over_two_mocos_share=(groups['relation mining'] +
                                             groups['bank update'] +
                                             groups['logged statistics']) /
            total)
    if 'loading' in var:
        ld = var['loading']
        summary['loading_dominates'] = (
            ld['median_wait_seconds'] > ld['median_compute_seconds'])
        summary['loading_wait_share'] = ld['mean_wait_seconds'] / (
            ld['mean_wait_seconds'] + ld['mean_compute_seconds'])
    if 'miner' in var:
        miner = var['miner']
        ph = miner['phase_seconds']
        mining = (
            ph['mining_assign_and_mask'] + ph['bank_update'] +
            miner['refresh_seconds'] / miner['config_refresh_interval'])
        out = dict(
            batch=miner['batch'],
            mining_plus_bank_update_seconds=mining,
            all_extra_seconds=mining + ph['relation_stats'] +
            ph['relation_loss_extra'])
        if 'rekd_seconds_amortised' in summary:
            # The backbones dominate a CPU step and scale ~linearly with the
            # batch: an estimate of the step at the miner's batch.
            measured_batch = var['rekd']['inputs']['view_shape'][0]
            step = summary['rekd_seconds_amortised'] * (
                miner['batch'] / measured_batch)
            out.update(
                estimated_rekd_step_seconds=step,
                estimated_mining_plus_bank_update_share=mining / step,
                estimated_all_extra_share=out['all_extra_seconds'] / step)
        summary['miner_only'] = out
    if 'staleness' in var:
        summary['staleness'] = summarise_staleness(
            var['staleness'], results['settings']['refresh_intervals'])
    return summary


def _quantile(values: List[float], q: float) -> float:
    return float(torch.tensor(values, dtype=torch.float64).quantile(q))


def summarise_staleness(stale: Dict, intervals: List[int]) -> Dict:
    """Mismatch after n iterations, and its mean over a refresh cycle.

    With interval I the mining sees caches 0..I-1 bank updates old (0 right
    after a refresh), so the error it works with on average is the mean of
    f(0)=0, f(1), ..., f(I-1).
    """
    by_age = {r['age']: r for r in stale['records']}
    # Ages at which no anchor reached Θ any more: the bank mined nothing,
    # so mismatches there cost no relation.
    dead = [
        r['age'] for r in stale['records']
        if r.get('anchor_assigned_ratio', 1.0) == 0
    ]
    out = dict(
        at_age={},
        mean_over_cycle={},
        first_age_without_assigned_anchor=min(dead) if dead else None)
    for age in (1, 2, 5, 10, 20, 30, 50, 70, 100, 150, 200, 300):
        if age in by_age:
            out['at_age'][str(age)] = dict(
                slot_mismatch=by_age[age]['slot_mismatch'],
                pair_error=by_age[age]['pair_error'],
                anchor_assigned_ratio=by_age[age].get('anchor_assigned_ratio'))
    for interval in intervals:
        if interval - 1 not in by_age and interval > 1:
            continue
        ages = range(interval)
        out['mean_over_cycle'][str(interval)] = dict(
            slot_mismatch=sum(by_age[a]['slot_mismatch'] if a else 0.0
                              for a in ages) / interval,
            pair_error=sum(by_age[a]['pair_error'] if a else 0.0
                           for a in ages) / interval,
            bank_alive_throughout=not any(a in dead for a in ages))
    return out


def to_markdown(results: Dict) -> str:
    var, summ, machine = (results['variants'], results['summary'],
                          results['machine'])
    lines = [
        f"# Training-step cost: {os.path.basename(results['config'])}", '',
        f"Command: `{results['command']}`", '',
        f"Machine: {machine['cpu_model']}, {machine['usable_cores']} usable "
        f"cores, torch {machine['torch']}, {machine['torch_threads']} "
        f"thread(s), device {results['settings']['device']}" +
        (f" ({machine.get('cuda_device')})" if machine.get('cuda_device') else
         '') + f", load average {machine['load_average']}.", ''
    ]
    any_var = next((v for v in var.values() if 'inputs' in v), None)
    if any_var is not None:
        lines += [
            f"Inputs: {any_var['inputs']['source']}. Medians over "
            f"{results['settings']['iters']} iterations after "
            f"{results['settings']['warmup']} warm-up.", ''
        ]
    rows = []
    for name in TIMED:
        if name not in var:
            continue
        mem = var[name].get('memory', {})
        ru = var[name].get('rusage_medians', {})
        rows.append([
            name, var[name]['median_step_seconds'],
            min(var[name]['step_seconds']),
            ru.get('user_seconds', 0) + ru.get('system_seconds', 0),
            ru.get('system_seconds'),
            ru.get('minor_page_faults'),
            mem.get('cuda_peak_allocated_mib', mem.get('peak_rss_mib')),
            mem.get('peak_rss_over_before_mib',
                    mem.get('cuda_peak_over_before_mib'))
        ])
    if rows:
        lines += [
            markdown_table([
                'variant', 'step s (median)', 'step s (min)',
                'user+sys CPU s (median)', 'sys s', 'page faults', 'peak MiB',
                'training memory over model + inputs MiB'
            ], rows), ''
        ]
    if 'rekd_over_student_plus_teacher' in summ:
        rekd = var['rekd']
        pr = summ['rekd_over_student_plus_teacher_per_round']
        lines += [
            f"ReKD (K={rekd['num_prototypes']}, L={rekd['queue_len']}, "
            f"Θ={rekd['miner_threshold']}, "
            f"{rekd['relation_pos_per_anchor']:.1f} mined positives per "
            "anchor) amortised over refresh interval "
            f"{rekd['config_refresh_interval']}: "
            f"{summ['rekd_seconds_amortised']:.4g} s = "
            f"**{summ['rekd_over_student_plus_teacher']:.3f} x** (student + "
            f"teacher MoCo v2) (target <= 1.05); median of the per-round "
            f"ratios {pr['median']:.3f} (interquartile {pr['q25']:.3f}-"
            f"{pr['q75']:.3f}); in process CPU time "
            f"{summ.get('rekd_over_student_plus_teacher_cpu_time', 0):.3f}. "
            'One full queue refresh: '
            f"{summ['refresh_seconds']:.4g} s; share of a ReKD step per "
            'refresh interval: ' +
            ', '.join(f'{i}: {s * 100:.2f}%'
                      for i, s in summ['refresh_cost_share'].items()) + '.', ''
        ]
    if 'breakdown_groups_seconds' in summ:
        rows = [[k, v, summ['breakdown_groups_share'][k] * 100]
                for k, v in summ['breakdown_groups_seconds'].items()]
        lines += [
            'ReKD step, phase by phase (re-played with the model\'s own '
            'methods, medians per phase):', '',
            markdown_table(['phase', 'seconds', '% of step'], rows), '',
            f"Relation mining + bank update: "
            f"**{summ['mining_plus_bank_update_share'] * 100:.2f}%** of the "
            'step (target <= 3%); with the logged relation statistics: '
            f"{summ['rekd_extra_over_two_mocos_share'] * 100:.2f}%.", ''
        ]
    if 'miner_only' in summ:
        mo, ph = summ['miner_only'], var['miner']['phase_seconds']
        lines += [
            f"Miner operations alone at batch {mo['batch']} (random keys, "
            f"K={var['miner']['num_prototypes']}, "
            f"L={var['miner']['queue_len']}):", '',
            markdown_table(['operation', 'ms'],
                           [[k, v * 1e3] for k, v in ph.items()]), '',
            f"Mining + bank update (refresh amortised): "
            f"{mo['mining_plus_bank_update_seconds'] * 1e3:.3g} ms per step; "
            'with the relation statistics and the extra cost of the mined '
            f"positives in the loss: {mo['all_extra_seconds'] * 1e3:.3g} ms."
        ]
        if 'estimated_rekd_step_seconds' in mo:
            lines[-1] += (
                ' Against the ReKD step scaled linearly to that batch '
                f"({mo['estimated_rekd_step_seconds']:.4g} s, an estimate): "
                f"{mo['estimated_mining_plus_bank_update_share'] * 100:.3f}%"
                f" and {mo['estimated_all_extra_share'] * 100:.3f}%.")
        lines.append('')
    if 'loading' in var:
        ld = var['loading']
        lines += [
            f"Data loading ({ld['num_workers']} workers, batch "
            f"{ld['batch_size']}): median wait "
            f"{ld['median_wait_seconds']:.4g} s vs compute "
            f"{ld['median_compute_seconds']:.4g} s per iteration (means "
            f"{ld['mean_wait_seconds']:.4g} / {ld['mean_compute_seconds']:.4g}"
            f" s; the loader alone: {ld['loader_alone_median_seconds']:.4g} "
            f"s/batch). Loading dominates: "
            f"{'yes' if summ['loading_dominates'] else 'no'}.", ''
        ]
    if 'staleness' in summ:
        st = summ['staleness']
        sv = var['staleness']
        lines += [
            f"Cached queue assignments vs exact, real training "
            f"(K={sv['num_prototypes']}, L={sv['queue_len']}, batch "
            f"{sv['batch_size']}, {sv['iters_after_init']} iterations after "
            f"the bank's initialisation at iter {sv['init_iter']}):", '',
            markdown_table([
                'iterations since refresh', 'slots mismatched %',
                'mined pairs wrong %', 'anchors assigned %'
            ], [[
                a, v['slot_mismatch'] * 100, v['pair_error'] * 100,
                None if v['anchor_assigned_ratio'] is None else
                v['anchor_assigned_ratio'] * 100
            ] for a, v in st['at_age'].items()]), '',
            markdown_table([
                'refresh interval', 'mean slots mismatched %',
                'mean mined pairs wrong %', 'anchors assigned throughout'
            ], [[
                i, v['slot_mismatch'] * 100, v['pair_error'] * 100,
                'yes' if v['bank_alive_throughout'] else 'no'
            ] for i, v in st['mean_over_cycle'].items()]), ''
        ]
        if st['first_age_without_assigned_anchor'] is not None:
            lines += [
                'From '
                f"{st['first_age_without_assigned_anchor']} iterations after "
                'the initialisation no anchor of the batch reached Θ: the '
                'bank mined no relation (the teacher moved away from the '
                'prototypes), so later mismatches cost nothing.', ''
            ]
    return '\n'.join(lines)


def main(argv: Optional[List[str]] = None) -> Dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.worker is not None:
        result = run_worker(args)
        with open(args.worker_out, 'w') as f:
            json.dump(result, f)
        return result

    torch.set_num_threads(args.threads)
    variants = list(args.variants or VARIANTS)
    if args.synthetic and 'loading' in variants:
        variants.remove('loading')
    results = dict(
        benchmark='train_speed',
        config=args.config,
        command=command_line(),
        machine=machine_info(),
        settings=dict(
            iters=args.iters,
            warmup=args.warmup,
            batch_size=args.batch_size,
            synthetic=args.synthetic,
            img_size=args.img_size if args.synthetic else None,
            miner_threshold=args.miner_threshold,
            refresh_intervals=args.refresh_intervals,
            device=args.device,
            threads=args.threads,
            method=('step = forward, backward, optimiser step on inputs '
                    'pre-processed once; variants timed round-robin in one '
                    'subprocess (same background load), medians after '
                    'warm-up; peak memory of each variant in a fresh '
                    'subprocess; the breakdown re-plays ReKD.loss phase by '
                    'phase (see rekd_step_by_step)')),
        variants={})
    timed = [v for v in variants if v in TIMED]
    if timed:
        print(f'[train_speed] timing {timed} ...', flush=True)
        timing = _run_worker_subprocess(
            args, argv, ['--worker', 'timing', '--timed-variants'] + timed)
        results['timing_subprocess_seconds'] = timing.pop('subprocess_seconds')
        results['variants'].update(timing)
        for name in ('moco_student', 'moco_teacher', 'rekd'):
            if name in timed:
                print(f'[train_speed] memory of {name} ...', flush=True)
                results['variants'][name]['memory'] = _run_worker_subprocess(
                    args, argv,
                    ['--worker', 'memory', '--memory-variant', name])
    for worker in ('loading', ) * ('loading' in variants) + ('staleness', ) * (
            args.staleness_iters > 0) + ('miner', ) * (args.miner_batch > 0):
        print(f'[train_speed] {worker} ...', flush=True)
        results['variants'][worker] = _run_worker_subprocess(
            args, argv, ['--worker', worker])
    results['summary'] = summarise(results)
    text = to_markdown(results)
    print(text)
    write_results(args.out, results, text)
    return results


if __name__ == '__main__':
    main()
