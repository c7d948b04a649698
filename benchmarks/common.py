# Copyright (c) rekd_mm contributors. All rights reserved.
"""Helpers shared by the benchmark scripts: machine description (and whether
the git tree has uncommitted changes), peak memory, medians, result files and
plot colours, and the building blocks of the training-step benchmarks
(``train_speed.py``, ``gpu_check.py``): config, inputs, models, a prepared
prototype bank, the training step and its phase-by-phase replay.

Kept free of torch at import time (the functions import it) so that a script
can set ``OMP_NUM_THREADS`` before torch is imported.
"""
from __future__ import annotations
import copy
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Tuple

if TYPE_CHECKING:  # annotations only: torch is imported where it is used
    import argparse

    import torch
    import torch.nn as nn

__all__ = [
    'machine_info', 'git_dirty', 'command_line', 'read_proc_status_kib',
    'reset_peak_rss', 'peak_rss_mib', 'rss_mib', 'median', 'markdown_table',
    'write_results', 'variant_colours', 'PHASE_GROUPS', 'build_config',
    'init_scope', 'build_inputs', 'build_model', 'prepare_bank',
    'build_optim_wrapper', 'train_step', 'PhaseTimer', 'rekd_step_by_step',
    'sync', 'memory_start', 'memory_end'
]


def _cpu_model() -> str:
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or 'unknown'


def _git_commit() -> Optional[str]:
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        out = subprocess.run(['git', 'rev-parse', 'HEAD'],
                             cwd=repo,
                             capture_output=True,
                             text=True,
                             timeout=10)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def git_dirty() -> Optional[bool]:
    """Whether the repository's tracked files have uncommitted changes.

    Returns:
        bool, optional: True when ``git status`` lists changes to tracked
        files, False when it lists none, None when git could not tell
        (no git, not a repository, time-out).
    """
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        out = subprocess.run(
            ['git', 'status', '--porcelain', '--untracked-files=no'],
            cwd=repo,
            capture_output=True,
            text=True,
            timeout=10)
        return bool(out.stdout.strip()) if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def machine_info() -> Dict:
    """Describe the machine and software a measurement ran on."""
    import torch
    info = dict(
        cpu_model=_cpu_model(),
        logical_cores=os.cpu_count(),
        usable_cores=len(os.sched_getaffinity(0)) if hasattr(
            os, 'sched_getaffinity') else os.cpu_count(),
        torch_threads=torch.get_num_threads(),
        omp_num_threads=os.environ.get('OMP_NUM_THREADS'),
        python=platform.python_version(),
        torch=torch.__version__,
        platform=platform.platform(),
        load_average=list(os.getloadavg()),
        git_commit=_git_commit(),
        # glibc allocator settings change CPU step times (page faults).
        allocator_env={
            k: v
            for k, v in os.environ.items()
            if k.startswith('MALLOC_') or k == 'LD_PRELOAD'
        },
        date_utc=time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()),
    )
    for name in ('mmengine', 'mmpretrain'):
        try:
            info[name] = __import__(name).__version__
        except ImportError:
            info[name] = None
    if torch.cuda.is_available():
        info['cuda_device'] = torch.cuda.get_device_name()
    return info


def command_line() -> str:
    """The command that produced a result, with the thread setting."""
    env = ['OMP_NUM_THREADS'] + sorted(
        k for k in os.environ if k.startswith('MALLOC_'))
    prefix = ''.join(f'{k}={os.environ.get(k, "")} ' for k in env)
    return prefix + ' '.join(
        shlex.quote(arg)
        for arg in [os.path.basename(sys.executable)] + sys.argv)


def read_proc_status_kib(key: str) -> Optional[int]:
    """A ``kB`` field of ``/proc/self/status`` (e.g. ``VmHWM``), or None."""
    try:
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith(key + ':'):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Reset the process's peak RSS (``VmHWM``) to its current RSS.

    Linux >= 4.0 resets the high-water mark when ``5`` is written to
    ``/proc/self/clear_refs``. Without it the peak is monotone over the
    whole process, which is why the benchmarks also run each variant in a
    fresh subprocess.

    Returns:
        bool: Whether the reset worked.
    """
    try:
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')
        return True
    except OSError:
        return False


def peak_rss_mib() -> Optional[float]:
    """Peak resident set size of this process in MiB."""
    kib = read_proc_status_kib('VmHWM')
    if kib is None:
        import resource
        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib / 1024


def rss_mib() -> Optional[float]:
    """Current resident set size of this process in MiB."""
    kib = read_proc_status_kib('VmRSS')
    return None if kib is None else kib / 1024


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float('nan')


def markdown_table(headers: List[str], rows: List[List]) -> str:
    """A Markdown table; floats are printed with 4 significant digits."""

    def fmt(value):
        if isinstance(value, float):
            return f'{value:.4g}'
        return '' if value is None else str(value)

    lines = [
        '| ' + ' | '.join(headers) + ' |',
        '|' + '|'.join('---' for _ in headers) + '|'
    ]
    lines += ['| ' + ' | '.join(fmt(v) for v in row) + ' |' for row in rows]
    return '\n'.join(lines)


def write_results(path: Optional[str],
                  results: Dict,
                  markdown: Optional[str] = None) -> None:
    """Write ``results`` as JSON to ``path`` and, when given, ``markdown``
    next to it (same name, ``.md``)."""
    if not path:
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, 'w') as f:
        json.dump(results, f, indent=2, sort_keys=False)
        f.write('\n')
    if markdown is not None:
        with open(os.path.splitext(path)[0] + '.md', 'w') as f:
            f.write(markdown.rstrip() + '\n')


def variant_colours(variants) -> Dict[str, str]:
    """One matplotlib colour per variant, the same in every panel and
    every figure of one result set, and no two variants alike.

    Sorted names take matplotlib's ten default colours (``C0`` ... ``C9``)
    while there are at most ten; more names take ``tab20``, its ten dark
    shades first and then their light partners, so that the final
    comparison's 13 rows (variants plus reference rows) do not share a
    colour as they did when the default cycle wrapped.

    Args:
        variants (Iterable[str]): Variant (or arm) names; repeats are fine.

    Returns:
        dict[str, str]: ``{name: colour}``, a matplotlib colour string.

    Raises:
        ValueError: More than 20 names, which no palette here tells apart.
    """
    names = sorted(set(variants))
    if len(names) <= 10:
        return {name: f'C{i}' for i, name in enumerate(names)}
    if len(names) > 20:
        raise ValueError(f'{len(names)} variants in one figure; the plots '
                         'tell at most 20 apart: split the result set')
    # Imported here, as torch is: scripts that never plot need no
    # matplotlib.
    from matplotlib import colormaps
    from matplotlib.colors import to_hex
    tab20 = colormaps['tab20'].colors
    # tab20 pairs each hue as (dark, light): dark shades first.
    order = list(range(0, 20, 2)) + list(range(1, 20, 2))
    return {name: to_hex(tab20[order[i]]) for i, name in enumerate(names)}


# --------------------------------------------------------------------------
# Building blocks of the training-step benchmarks (train_speed.py,
# gpu_check.py). torch is imported inside the functions: importing this
# module must not import it (see the module docstring).
# --------------------------------------------------------------------------
# Fine phases of rekd_step_by_step, grouped as reported.
PHASE_GROUPS = {
    'student fwd/bwd':
    ('student_forward', 'student_key_forward', 'student_backward'),
    'teacher fwd/bwd':
    ('teacher_forward', 'teacher_key_forward', 'teacher_backward'),
    'momentum updates': ('student_momentum_update', 'teacher_momentum_update'),
    'shuffle-BN gathers': ('shuffle_images', 'gather_keys'),
    'queue ops': ('queue_read', 'enqueue'),
    'relation mining':
    ('host_read', 'mining_refresh', 'mining_assign_and_mask'),
    'losses': ('teacher_loss', 'relation_loss', 'parse_losses'),
    'bank update': ('bank_update', ),
    'logged statistics': ('labels', 'relation_stats'),
    'optimizer step': ('optimizer_step', ),
}


def build_config(args):
    """Load the config with the command-line overrides applied (``args``:
    ``config``, ``cfg_options``, ``batch_size``, ``queue_len``,
    ``num_prototypes``)."""
    from mmengine.config import Config, DictAction
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        options = {}
        for item in args.cfg_options:
            key, value = item.split('=', 1)
            options[key] = DictAction._parse_iterable(value)
        cfg.merge_from_dict(options)
    if cfg.model.get('type') != 'ReKD':
        raise ValueError(f'{args.config}: model.type is '
                         f"{cfg.model.get('type')!r}; this benchmark needs a "
                         'ReKD config (it derives the MoCo baselines from it)')
    if args.batch_size is not None:
        cfg.train_dataloader.batch_size = args.batch_size
    if args.queue_len is not None:
        cfg.model.queue_len = args.queue_len
    if args.num_prototypes is not None:
        cfg.model.setdefault('miner', {})
        cfg.model.miner.num_prototypes = args.num_prototypes
    # Runner.from_cfg merges the top-level data_preprocessor the same way.
    if cfg.get('data_preprocessor') is not None:
        cfg.model.setdefault('data_preprocessor', cfg.data_preprocessor)
    return cfg


def init_scope() -> None:
    """Register rekd_mm's modules and make mmpretrain the default scope."""
    from mmengine.registry import init_default_scope

    import rekd_mm  # noqa: F401  (registers ReKD and its parts)
    init_default_scope('mmpretrain')


def build_inputs(cfg, args: argparse.Namespace,
                 device: str) -> Tuple[List[torch.Tensor], list, Dict]:
    """Two views and data samples, identical for every variant.

    With ``--synthetic``: seeded random views of ``--img-size`` and random
    labels (so that the relation-precision statistic runs). Otherwise the
    first batch of the config's ``train_dataloader`` (real augmentations,
    loaded without workers), pre-processed once by the config's data
    pre-processor.
    """
    import torch
    from mmpretrain.registry import MODELS
    from mmpretrain.structures import DataSample
    batch_size = cfg.train_dataloader.batch_size
    if args.synthetic:
        gen = torch.Generator().manual_seed(args.seed)
        shape = (batch_size, 3, args.img_size, args.img_size)
        inputs = [torch.randn(shape, generator=gen) for _ in range(2)]
        labels = torch.randint(1000, (batch_size, ), generator=gen)
        samples = [DataSample().set_gt_label(int(y)) for y in labels]
        source = f'synthetic {tuple(shape)} x 2 views'
    else:
        from mmengine.runner import Runner
        loader_cfg = copy.deepcopy(cfg.train_dataloader)
        loader_cfg.update(num_workers=0, persistent_workers=False)
        loader = Runner.build_dataloader(loader_cfg, seed=args.seed)
        batch = next(iter(loader))
        preprocessor = MODELS.build(cfg.model.data_preprocessor)
        data = preprocessor(batch, True)
        inputs, samples = data['inputs'], data['data_samples']
        source = (f"{cfg.train_dataloader.dataset.type} first batch "
                  f'{tuple(inputs[0].shape)} x {len(inputs)} views')
    inputs = [view.to(device) for view in inputs]
    samples = [sample.to(device) for sample in samples]
    return inputs, samples, dict(
        source=source, view_shape=list(inputs[0].shape))


def build_model(cfg, variant: str) -> nn.Module:
    """The ReKD model of the config, or a MoCo v2 with its student or its
    teacher (mmpretrain's ``MoCo``, same neck, queue, momentum and
    temperature; the teacher's queue in its own ``teacher_feat_dim``)."""
    from mmpretrain.registry import MODELS
    model_cfg = copy.deepcopy(cfg.model)
    model_cfg.pop('teacher_pretrained', None)  # time the online teacher
    if variant.startswith('rekd') or variant == 'loading':
        return MODELS.build(model_cfg)
    student = variant == 'moco_student'
    momentum = model_cfg.get('momentum', 0.001)
    if not student and model_cfg.get('teacher_momentum') is not None:
        momentum = model_cfg.teacher_momentum
    feat_dim = model_cfg.get('feat_dim', 128)
    if not student:
        feat_dim = model_cfg.get('teacher_feat_dim') or feat_dim
    head = copy.deepcopy(model_cfg.teacher_head)
    if student:
        head['temperature'] = model_cfg.head.get('temperature',
                                                 head.get('temperature'))
    return MODELS.build(
        dict(
            type='MoCo',
            backbone=model_cfg.backbone
            if student else model_cfg.teacher_backbone,
            neck=model_cfg.neck if student else model_cfg.teacher_neck,
            head=head,
            queue_len=model_cfg.get('queue_len', 65536),
            feat_dim=feat_dim,
            momentum=momentum,
            data_preprocessor=model_cfg.get('data_preprocessor')))


def prepare_bank(model: nn.Module,
                 threshold: Optional[float],
                 seed: int = 0,
                 num_classes: int = 1000) -> None:
    """Put a ReKD model in the state of a run whose bank is initialised.

    Both queues count as full (their random unit keys stand in for past
    keys), every slot has a label (so the relation-precision statistic
    runs), the prototypes are K distinct teacher-queue keys, and the cached
    queue assignments are fresh.

    Args:
        model (nn.Module): A ReKD model.
        threshold (float, optional): Θ to use instead of the config's.
        seed (int): Seed of the random choices. Defaults to 0.
        num_classes (int): Labels drawn for the queue. Defaults to 1000.
    """
    import torch
    import torch.nn.functional as F
    with torch.no_grad():
        gen = torch.Generator().manual_seed(seed)
        num_k, queue_len = model.miner.num_prototypes, model.queue_len
        if num_k > queue_len:
            raise ValueError(f'model.miner.num_prototypes={num_k} exceeds '
                             f'queue_len={queue_len}: the benchmark draws the '
                             'prototypes from the teacher queue')
        device = model.teacher_queue.device
        model.queue_count.fill_(queue_len)
        model.queue_labels.copy_(
            torch.randint(num_classes, (queue_len, ), generator=gen))
        pick = torch.randperm(queue_len, generator=gen)[:num_k].to(device)
        model.miner.prototypes.copy_(
            F.normalize(model.teacher_queue[:, pick].t(), dim=1))
        model.miner.initialized.fill_(True)
        if threshold is not None:
            model.miner.threshold = float(threshold)
        model.refresh_queue_assign()


def build_optim_wrapper(model: nn.Module, cfg, device: str):
    """The config's optimiser wrapper; AMP becomes a plain wrapper on CPU."""
    from mmengine.optim import build_optim_wrapper as build
    optim_cfg = copy.deepcopy(cfg.optim_wrapper)
    if device == 'cpu' and optim_cfg.get('type') == 'AmpOptimWrapper':
        optim_cfg['type'] = 'OptimWrapper'  # AMP is a CUDA feature
        optim_cfg.pop('dtype', None)
        optim_cfg.pop('loss_scale', None)
    return build(model, optim_cfg)


def train_step(model: nn.Module, optim_wrapper, inputs: List[torch.Tensor],
               data_samples: list) -> Dict[str, torch.Tensor]:
    """``BaseModel.train_step`` without the data pre-processing (the inputs
    are pre-processed once)."""
    with optim_wrapper.optim_context(model):
        losses = model.loss(inputs, data_samples)
    parsed, _ = model.parse_losses(losses)
    optim_wrapper.update_params(parsed)
    return losses


class PhaseTimer:
    """Wall-clock time of consecutive phases, synchronising CUDA between
    them so that asynchronous kernels are charged to their own phase."""

    def __init__(self, device: str) -> None:
        self.cuda = device.startswith('cuda')
        self.times: Dict[str, float] = {}
        self._last = None

    def _now(self) -> float:
        import torch
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def start(self) -> None:
        self.times = {}
        self._last = self._now()

    def lap(self, phase: str) -> None:
        now = self._now()
        self.times[phase] = self.times.get(phase, 0.0) + now - self._last
        self._last = now


class _NoTimer(PhaseTimer):

    def __init__(self) -> None:
        super().__init__('cpu')

    def start(self) -> None:
        pass

    def lap(self, phase: str) -> None:
        pass


def rekd_step_by_step(
        model: nn.Module,
        optim_wrapper,
        inputs: List[torch.Tensor],
        data_samples: list,
        timer: Optional[PhaseTimer] = None) -> Dict[str, torch.Tensor]:
    """One ReKD training step, ``ReKD.loss`` re-played phase by phase.

    Calls the model's own submodules and methods in the order of
    ``ReKD.loss`` (online teacher), inside the optimiser wrapper's context
    (autocast under AMP) as ``train_step`` does, with ``timer.lap`` between
    phases; the backward pass is split into the student's
    (``loss_relation``) and the teacher's (``loss_teacher``) because their
    graphs are disjoint. ``tests/test_benchmarks`` checks that this gives
    the same losses, buffers and parameters as ``train_step``, so the
    breakdown measures what training runs.

    Args:
        model (nn.Module): A ReKD model with an online teacher and
            ``loss_weights['kd'] == 0``.
        optim_wrapper (OptimWrapper): Its optimiser wrapper.
        inputs (List[Tensor]): Two pre-processed views.
        data_samples (list): Data samples (labels for the statistics).
        timer (PhaseTimer, optional): Receives the phase laps.

    Returns:
        Dict[str, Tensor]: The loss dict, as ``ReKD.loss`` returns it.
    """
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
    from mmengine.dist import all_gather

    from rekd_mm.models.utils.batch_shuffle import (gather_shuffled,
                                                    gather_unshuffled)
    if model.teacher_frozen or model.loss_weights['kd'] > 0:
        raise ValueError('rekd_step_by_step re-plays the online-teacher, '
                         'kd=0 path of ReKD.loss only')
    timer = timer or _NoTimer()
    im_q, im_k = inputs[0], inputs[1]
    weights = model.loss_weights
    losses = dict()
    timer.start()

    with optim_wrapper.optim_context(model):
        bank_ready, refresh_due = model._host_state()
        timer.lap('host_read')
        student = nn.Sequential(model.backbone, model.neck)
        q_s = F.normalize(student(im_q)[0], dim=1)
        timer.lap('student_forward')
        teacher = nn.Sequential(model.teacher.backbone, model.teacher.neck)
        q_t = F.normalize(teacher(im_q)[0], dim=1)
        timer.lap('teacher_forward')
        with torch.no_grad():
            model.encoder_k.update_parameters(student)
            timer.lap('student_momentum_update')
            model.teacher_encoder_k.update_parameters(teacher)
            timer.lap('teacher_momentum_update')
            perm = model.shuffle_permutation(im_k.shape[0])
            im_local = gather_shuffled(im_k, perm)
            timer.lap('shuffle_images')
            k_s = F.normalize(model.encoder_k(im_local)[0].float(), dim=1)
            timer.lap('student_key_forward')
            k_t = F.normalize(
                model.teacher_encoder_k(im_local)[0].float(), dim=1)
            timer.lap('teacher_key_forward')
            (k_s, k_t), (all_k_s, all_k_t) = gather_unshuffled([k_s, k_t],
                                                               perm)
        timer.lap('gather_keys')

        teacher_queue = model.teacher_queue.clone().detach()
        student_queue = model.queue.clone().detach()
        timer.lap('queue_read')
        l_pos, l_neg = model.contrastive_logits(q_t, k_t, teacher_queue)
        losses['loss_teacher'] = weights['teacher'] * model.teacher_head.loss(
            l_pos, l_neg)
        timer.lap('teacher_loss')

        labels = model.batch_labels(data_samples, k_t.shape[0], k_t.device)
        timer.lap('labels')
        center = (all_k_t.mean(0) if model.mining_center is not None else None)
        if bank_ready and refresh_due:
            model.refresh_queue_assign()
        timer.lap('mining_refresh')
        pos_mask, anchor_assign = model.mine_relations(
            k_t, center, labels, bank_ready=bank_ready)
        timer.lap('mining_assign_and_mask')
        relation_scale = model.relation_scale()
        with torch.autocast(device_type=q_s.device.type, enabled=False):
            losses['loss_relation'] = weights['relation'] * model.head.loss(
                q_s.float(),
                k_s,
                student_queue,
                pos_mask,
                mined_scale=relation_scale)
        timer.lap('relation_loss')
        losses.update(model._relation_stats(pos_mask, anchor_assign, labels))
        losses['relation_scale'] = relation_scale if pos_mask is not None \
            else relation_scale.new_zeros(())
        timer.lap('relation_stats')

        with torch.no_grad():
            all_labels = torch.cat(all_gather(labels))
            all_m_t = model.mining_space(all_k_t, center)
            all_assign = model.update_bank(all_m_t, bank_ready=bank_ready)
            timer.lap('bank_update')
            model._dequeue_and_enqueue(all_k_s, all_k_t, all_assign,
                                       all_labels, all_m_t)
        timer.lap('enqueue')

    parsed, _ = model.parse_losses(losses)
    timer.lap('parse_losses')
    # OptimWrapper.update_params = backward + step + zero_grad (no
    # accumulation, no clipping in these configs); the backward is split.
    optim_wrapper.backward(losses['loss_relation'])
    timer.lap('student_backward')
    optim_wrapper.backward(losses['loss_teacher'])
    timer.lap('teacher_backward')
    optim_wrapper.step()
    optim_wrapper.zero_grad()
    timer.lap('optimizer_step')
    del parsed
    return losses


def sync(device: str) -> None:
    """Wait for the device's queued work (a no-op on CPU)."""
    import torch
    if device.startswith('cuda'):
        torch.cuda.synchronize()


def memory_start(device: str) -> Dict:
    """Reset the peak-memory counter (CUDA allocator or process RSS)."""
    import torch
    if device.startswith('cuda'):
        torch.cuda.reset_peak_memory_stats()
        return dict(cuda_allocated_before_mib=torch.cuda.memory_allocated() /
                    2**20)
    peak_before = peak_rss_mib()
    reset_ok = reset_peak_rss()
    return dict(
        rss_before_steps_mib=rss_mib(),
        peak_rss_before_steps_mib=peak_before,
        peak_rss_reset=reset_ok)


def memory_end(device: str, mem: Dict) -> Dict:
    """Add the peak since :func:`memory_start` to ``mem``."""
    import torch
    if device.startswith('cuda'):
        mem['cuda_peak_allocated_mib'] = (
            torch.cuda.max_memory_allocated() / 2**20)
        mem['cuda_peak_over_before_mib'] = (
            mem['cuda_peak_allocated_mib'] - mem['cuda_allocated_before_mib'])
    else:
        # Peak RSS of the whole process since the reset (or since its start
        # where the reset is unavailable): includes the ~0.7 GiB of torch
        # and mmpretrain, hence also the delta over the RSS before the steps.
        mem['peak_rss_mib'] = peak_rss_mib()
        mem['peak_rss_over_before_mib'] = (
            mem['peak_rss_mib'] - mem['rss_before_steps_mib'])
    return mem
