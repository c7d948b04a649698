# Copyright (c) rekd_mm contributors. All rights reserved.
"""Training runs of a config through ``tools/train.py``, and reading back
what they logged: shared by ``quality.py`` and ``regime_search.py``.

- the configs the benchmarks train, per regime and data set
  (:data:`REGIMES`), with the checks and data-root overrides of their data
  (:func:`check_data`, :func:`dataset_options`);
- a run in a fresh subprocess (:func:`run_train`), its timestamped log
  directory (:func:`latest_log_dir`) and its last checkpoint
  (:func:`last_checkpoint`);
- the entries of its ``vis_data/scalars.json`` (:func:`read_scalars`,
  :func:`read_all_scalars`), the training loop's time they add up to
  (:func:`train_loop_seconds`) and the config with overrides as the run
  built it (:func:`load_cfg`).

Kept free of torch at import time, like ``common.py``: the training runs
are subprocesses, and ``mmengine`` is imported where a config is read.
"""
import glob
import json
import os
import os.path as osp
import shlex
import signal
import subprocess
import sys
import threading
import time
from typing import Dict, List, Optional, Sequence

__all__ = [
    'REPO_ROOT', 'TRAIN_SCRIPT', 'REGIMES', 'REGIME_ITERS', 'DATASETS',
    'dataset_options', 'check_data', 'run_train', 'wait_or_stop',
    'latest_log_dir', 'last_checkpoint', 'read_scalars', 'read_all_scalars',
    'train_loop_seconds', 'load_cfg'
]

REPO_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
TRAIN_SCRIPT = osp.join(REPO_ROOT, 'tools', 'train.py')

# The paired configs of each regime (same student, data, augmentations, batch
# and schedule) and the student's linear-probe config, per data set.
# ``demo``: the CPU demos (stride-32 MobileNetV2: 1 x 1 last map at 32 px);
# ``small``: the small-image regime (stride-1 stems, docs/quality.md);
# ``small4k``: the same fixed after the regime search (``*_1xb64-4ki_*``:
# split BN, lr 0.015, 4000 iterations, Fashion-MNIST crops (0.5, 1)).
REGIMES = {
    'demo':
    dict({
        'fashion-mnist':
        dict(
            mocov2='configs/mocov2_mobilenet-v2_1xb64-400i_fashion-mnist.py',
            rekd='configs/'
            'rekd_mobilenet-v2-t-resnet18_1xb64-400i_fashion-mnist.py',
            probe='configs/benchmarks/linear_probe/'
            'mobilenet-v2_1xb256-linear-coslr-10e_fashion-mnist.py',
            probe_options=[],
            data_root='data/fashion_mnist'),
        'cifar10':
        dict(
            mocov2='configs/mocov2_mobilenet-v2_1xb64-400i_cifar10.py',
            rekd='configs/'
            'rekd_mobilenet-v2-t-resnet18_1xb64-400i_cifar10.py',
            probe='configs/benchmarks/linear_probe/'
            'mobilenet-v2_1xb256-linear-coslr-10e_cifar10-32px.py',
            probe_options=[],
            data_root='../shared/data/cifar10'),
    }),
    'small':
    dict({
        'fashion-mnist':
        dict(
            mocov2='configs/'
            'mocov2_mobilenet-v2-cifar_1xb64-2ki_fashion-mnist.py',
            rekd='configs/rekd_mobilenet-v2-cifar-t-resnet18-cifar_'
            '1xb64-2ki_fashion-mnist.py',
            probe='configs/benchmarks/linear_probe/'
            'mobilenet-v2_1xb256-linear-coslr-10e_fashion-mnist.py',
            probe_options=['model.backbone.type=MobileNetV2_CIFAR'],
            supervised='configs/benchmarks/supervised/'
            'mobilenet-v2-cifar_1xb64-2ki_fashion-mnist.py',
            data_root='data/fashion_mnist'),
        'cifar10':
        dict(
            mocov2='configs/mocov2_mobilenet-v2-cifar_1xb64-2ki_cifar10.py',
            rekd='configs/rekd_mobilenet-v2-cifar-t-resnet18-cifar_'
            '1xb64-2ki_cifar10.py',
            probe='configs/benchmarks/linear_probe/'
            'mobilenet-v2_1xb256-linear-coslr-10e_cifar10-32px.py',
            probe_options=['model.backbone.type=MobileNetV2_CIFAR'],
            supervised='configs/benchmarks/supervised/'
            'mobilenet-v2-cifar_1xb64-2ki_cifar10.py',
            data_root='../shared/data/cifar10'),
    }),
    'small4k':
    dict({
        'fashion-mnist':
        dict(
            mocov2='configs/'
            'mocov2_mobilenet-v2-cifar_1xb64-4ki_fashion-mnist.py',
            rekd='configs/rekd_mobilenet-v2-cifar-t-resnet18-cifar_'
            '1xb64-4ki_fashion-mnist.py',
            probe='configs/benchmarks/linear_probe/'
            'mobilenet-v2_1xb256-linear-coslr-10e_fashion-mnist.py',
            probe_options=['model.backbone.type=MobileNetV2_CIFAR'],
            supervised='configs/benchmarks/supervised/'
            'mobilenet-v2-cifar_1xb64-4ki_fashion-mnist.py',
            data_root='data/fashion_mnist'),
        'cifar10':
        dict(
            mocov2='configs/mocov2_mobilenet-v2-cifar_1xb64-4ki_cifar10.py',
            rekd='configs/rekd_mobilenet-v2-cifar-t-resnet18-cifar_'
            '1xb64-4ki_cifar10.py',
            probe='configs/benchmarks/linear_probe/'
            'mobilenet-v2_1xb256-linear-coslr-10e_cifar10-32px.py',
            probe_options=['model.backbone.type=MobileNetV2_CIFAR'],
            supervised='configs/benchmarks/supervised/'
            'mobilenet-v2-cifar_1xb64-4ki_cifar10.py',
            data_root='../shared/data/cifar10'),
    }),
}
DATASETS = REGIMES['small']
# ``train_cfg.max_iters`` of each regime's configs (``quality.py --iters``
# defaults to it).
REGIME_ITERS = {'demo': 400, 'small': 2000, 'small4k': 4000}


# --------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------
def dataset_options(name: str, cifar_root: Optional[str]) -> Dict:
    """Data-root overrides for pretraining (and kNN) and for the probe.

    Args:
        name (str): A data set of :data:`DATASETS`.
        cifar_root (str, optional): CIFAR-10 folder replacing the configs'
            data root (``--cifar-root``). None keeps the configs'.

    Returns:
        dict: ``train`` (the pretraining run's and its kNN loaders') and
        ``probe`` (the linear probe's loaders) lists of ``key=value``
        strings; both empty unless ``name`` is ``'cifar10'`` and
        ``cifar_root`` is given.
    """
    if name != 'cifar10' or cifar_root is None:
        return dict(train=[], probe=[])
    root = osp.abspath(cifar_root)
    train = [
        f'{loader}.dataset.data_root={root}'
        for loader in ('train_dataloader', 'knn_train_dataloader',
                       'knn_val_dataloader')
    ]
    probe = [
        f'{loader}.dataset.data_root={root}'
        for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader')
    ]
    return dict(train=train, probe=probe)


def check_data(name: str, cifar_root: Optional[str]) -> None:
    """Check that a data set's files are where its configs expect them.

    Args:
        name (str): A data set of :data:`DATASETS`.
        cifar_root (str, optional): CIFAR-10 folder with ``train/`` and
            ``test/`` (``--cifar-root``). None: the configs' data root,
            relative to the repository root.

    Raises:
        FileNotFoundError: When the data set's folders are missing, with
            how to provide them.
    """
    if name == 'cifar10':
        root = cifar_root or osp.join(REPO_ROOT, DATASETS[name]['data_root'])
        missing = [
            s for s in ('train', 'test') if not osp.isdir(osp.join(root, s))
        ]
        if missing:
            raise FileNotFoundError(
                f'CIFAR-10 folders {missing} not found under {root}: expected '
                '<root>/{train,test}/<class>/<n>.jpg; pass --cifar-root')
    else:
        root = osp.join(REPO_ROOT, DATASETS[name]['data_root'])
        if not osp.isdir(root):
            raise FileNotFoundError(
                f'Fashion-MNIST not found at {root}: run tools/setup_env.sh '
                '(it unpacks the Debian dataset-fashion-mnist files there)')


# --------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------
def run_train(config: str,
              work_dir: str,
              options: List[str],
              threads: int,
              timeout: Optional[float],
              resume: bool = False) -> Dict:
    """``tools/train.py`` in a fresh process; returns the log dir and time.

    Output goes to ``<work_dir>/stdout.log``; a failure raises with its
    tail.

    Args:
        config (str): The config, relative to the repository root (the
            process runs there) or absolute.
        work_dir (str): ``--work-dir`` of the run (created if missing).
        options (list[str]): ``--cfg-options`` as ``key=value`` strings.
        threads (int): ``OMP_NUM_THREADS`` of the process.
        timeout (float, optional): Seconds allowed to the process. None:
            no limit.
        resume (bool): Continue from the work dir's latest checkpoint
            (``tools/train.py --resume``) when there is one; ``stdout.log``
            is then appended to. Defaults to False.

    Returns:
        dict: ``command`` (the command line), ``wall_s`` (its wall time),
        ``log_dir`` (the timestamped log directory it created) and
        ``stdout`` (the path of ``stdout.log``).

    Raises:
        RuntimeError: When the process exits non-zero.
    """
    os.makedirs(work_dir, exist_ok=True)
    before = glob.glob(osp.join(work_dir, '[0-9]*_[0-9]*'))
    cmd = [sys.executable, TRAIN_SCRIPT, config, '--work-dir', work_dir]
    if resume and osp.isfile(osp.join(work_dir, 'last_checkpoint')):
        cmd.append('--resume')
    if options:
        cmd += ['--cfg-options', *options]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    log_path = osp.join(work_dir, 'stdout.log')
    start = time.perf_counter()
    with open(log_path, 'a' if '--resume' in cmd else 'w') as log:
        proc = subprocess.Popen(
            cmd, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        wait_or_stop(proc, timeout)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        with open(log_path) as f:
            tail = ''.join(f.readlines()[-25:])
        raise RuntimeError(f'training failed (exit {proc.returncode}): '
                           f'{shlex.join(cmd)}\n--- {log_path} (tail) ---\n'
                           f'{tail}')
    return dict(
        command=shlex.join(cmd),
        wall_s=wall,
        log_dir=latest_log_dir(work_dir, before),
        stdout=log_path)


def _exit_on_sigterm(signum, frame):
    raise SystemExit(f'stopped by signal {signum}')


def wait_or_stop(proc: subprocess.Popen, timeout: Optional[float]) -> None:
    """Wait for a training process; never leave it running on our way out.

    A benchmark stopped by Ctrl-C, ``kill`` (SIGTERM) or its own timeout
    stops the training it started (SIGTERM, then SIGKILL after 30 s)
    instead of leaving it to compete for the cores with the next run.

    Args:
        proc (subprocess.Popen): The training process.
        timeout (float, optional): Seconds to wait. None: no limit.

    Raises:
        subprocess.TimeoutExpired: After ``timeout`` seconds (the process
            is stopped first).
    """
    # Python's default SIGTERM handler exits without unwinding; as an
    # exception it reaches the ``except`` below. Only the main thread may
    # set handlers.
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        proc.wait(timeout=timeout)
    except BaseException:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


# --------------------------------------------------------------------------
# Reading what a run left
# --------------------------------------------------------------------------
def latest_log_dir(work_dir: str, before: Sequence[str] = ()) -> str:
    """The timestamped log directory that the Runner created last.

    Args:
        work_dir (str): The run's work dir.
        before (Sequence[str]): Log directories that were there before the
            run (ignored). Defaults to ().

    Returns:
        str: The path of the newest other ``<timestamp>`` directory.

    Raises:
        FileNotFoundError: When there is none.
    """
    dirs = sorted(
        d for d in glob.glob(osp.join(work_dir, '[0-9]*_[0-9]*'))
        if osp.isdir(d) and d not in before)
    if not dirs:
        raise FileNotFoundError(
            f'no timestamped log directory in {work_dir}: did the run start?')
    return dirs[-1]


def last_checkpoint(work_dir: str) -> str:
    """The checkpoint that the work dir's ``last_checkpoint`` file names.

    Args:
        work_dir (str): The run's work dir.

    Returns:
        str: The checkpoint's path (a relative one is taken from the
        repository root).

    Raises:
        FileNotFoundError: When ``last_checkpoint`` or the checkpoint it
            names is missing.
    """
    path = osp.join(work_dir, 'last_checkpoint')
    if not osp.isfile(path):
        raise FileNotFoundError(
            f'{path} is missing: the run saved no checkpoint (is a '
            'CheckpointHook configured?)')
    with open(path) as f:
        ckpt = f.read().strip()
    if not osp.isabs(ckpt):
        ckpt = osp.join(REPO_ROOT, ckpt)
    if not osp.isfile(ckpt):
        raise FileNotFoundError(f'{path} points to {ckpt}, which is missing')
    return ckpt


def read_scalars(log_dir: str) -> List[dict]:
    """The entries of ``<log_dir>/vis_data/scalars.json`` (one per line).

    Args:
        log_dir (str): A run's timestamped log directory.

    Returns:
        list[dict]: The logged entries, in order.

    Raises:
        FileNotFoundError: When the run logged nothing.
    """
    path = osp.join(log_dir, 'vis_data', 'scalars.json')
    if not osp.isfile(path):
        raise FileNotFoundError(
            f'{path} is missing: the run logged nothing (is '
            'default_hooks.logger.interval larger than the number of '
            'iterations, or the LocalVisBackend disabled?)')
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def read_all_scalars(work_dir: str) -> List[dict]:
    """The logged entries of every run in the work dir, oldest first (an
    interrupted run, then its resumptions).

    Args:
        work_dir (str): The run's work dir.

    Returns:
        list[dict]: The entries of every ``<timestamp>`` log directory that
        has a ``vis_data/scalars.json``, in the order of the directories.
    """
    entries = []
    for log_dir in sorted(glob.glob(osp.join(work_dir, '[0-9]*_[0-9]*'))):
        if osp.isfile(osp.join(log_dir, 'vis_data', 'scalars.json')):
            entries += read_scalars(log_dir)
    return entries


def train_loop_seconds(entries: List[dict]) -> Optional[float]:
    """Time the training loop took, summed from its logged iteration times.

    The process wall time of a run split across sessions counts only its
    last part, and an interrupted part repeats the iterations after its last
    checkpoint. mmengine logs, every ``logger.interval`` iterations, the mean
    time of the iterations since its last log (``time``), so time ×
    iterations summed over the logged points is the loop's time without
    start-up and evaluation. Where a resumed part logs an iteration that an
    interrupted part had logged too, the later entry replaces the earlier:
    every iteration counts once, as in a run that was never cut.

    Args:
        entries (list[dict]): Logged entries, oldest part first (as
            :func:`read_all_scalars` returns them).

    Returns:
        float or None: Seconds, or None when no entry has an iteration time.
    """
    time_at_iter = {}
    for entry in entries:
        if 'iter' in entry and 'time' in entry:
            time_at_iter[int(entry['iter'])] = float(entry['time'])
    if not time_at_iter:
        return None
    total, previous = 0., 0
    for it in sorted(time_at_iter):
        total += time_at_iter[it] * (it - previous)
        previous = it
    return total


def load_cfg(config: str, options: List[str]):
    """The config with ``key=value`` overrides, as tools/train.py builds it
    (an evaluation of the run needs the same backbone and data roots).

    Args:
        config (str): The config, relative to the repository root.
        options (list[str]): ``key=value`` overrides (mmengine
            ``DictAction`` syntax).

    Returns:
        :obj:`mmengine.config.Config`: The merged config.
    """
    from mmengine.config import Config, DictAction
    cfg = Config.fromfile(osp.join(REPO_ROOT, config))
    parsed = {}
    for item in options:
        key, value = item.split('=', 1)
        parsed[key] = DictAction._parse_iterable(value)
    cfg.merge_from_dict(parsed)
    return cfg
