# Copyright (c) OpenMMLab. All rights reserved.
"""Helpers shared by the benchmark scripts: machine description, peak memory,
medians and result files.

Kept free of torch at import time so that a script can set
``OMP_NUM_THREADS`` before torch is imported.
"""
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from typing import Dict, List, Optional, Sequence

__all__ = [
    'machine_info', 'command_line', 'read_proc_status_kib', 'reset_peak_rss',
    'peak_rss_mib', 'rss_mib', 'median', 'markdown_table', 'write_results'
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
        shlex.quote(arg) for arg in [os.path.basename(sys.executable)] +
        sys.argv)


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

    lines = ['| ' + ' | '.join(headers) + ' |',
             '|' + '|'.join('---' for _ in headers) + '|']
    lines += ['| ' + ' | '.join(fmt(v) for v in row) + ' |' for row in rows]
    return '\n'.join(lines)


def write_results(path: Optional[str], results: Dict,
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
