# Copyright (c) rekd_mm contributors. All rights reserved.
"""benchmarks/train_runs.py: a benchmark that is stopped (SIGTERM, its own
timeout) stops the training process it started."""
import os
import os.path as osp
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from tests.scripts import load_script
from tests.toy_configs import REPO_ROOT

SCRIPT = osp.join(REPO_ROOT, 'benchmarks', 'train_runs.py')
# Stands in for tools/train.py: writes its pid into --work-dir and sleeps.
FAKE_TRAIN = textwrap.dedent('''
    import os, sys, time
    work_dir = sys.argv[sys.argv.index('--work-dir') + 1]
    with open(os.path.join(work_dir, 'pid'), 'w') as f:
        f.write(str(os.getpid()))
    time.sleep(600)
''')


def _fake_train(tmp_path):
    path = tmp_path / 'fake_train.py'
    path.write_text(FAKE_TRAIN)
    return str(path)


def _wait_for(path, seconds=60):
    deadline = time.time() + seconds
    while not osp.isfile(path) or not open(path).read():
        assert time.time() < deadline, f'{path} never appeared'
        time.sleep(0.1)
    return int(open(path).read())


def _gone(pid, seconds=60):
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


def test__sigterm_to_the_benchmark_stops_its_training(tmp_path):
    work_dir = str(tmp_path / 'work')
    driver = textwrap.dedent(f'''
        import sys
        sys.path.insert(0, {osp.dirname(SCRIPT)!r})
        import train_runs
        train_runs.TRAIN_SCRIPT = {_fake_train(tmp_path)!r}
        train_runs.run_train('config.py', {work_dir!r}, [], 1, None)
    ''')
    proc = subprocess.Popen([sys.executable, '-c', driver])
    child = _wait_for(osp.join(work_dir, 'pid'))
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) != 0
    assert _gone(child), f'training process {child} still running'


def test__timeout_stops_the_training(tmp_path, monkeypatch):
    train_runs = load_script(SCRIPT)
    monkeypatch.setattr(train_runs, 'TRAIN_SCRIPT', _fake_train(tmp_path))
    work_dir = str(tmp_path / 'work')
    with pytest.raises(subprocess.TimeoutExpired):
        train_runs.run_train('config.py', work_dir, [], 1, timeout=3)
    assert _gone(_wait_for(osp.join(work_dir, 'pid')))


def test__train_loop_seconds_counts_every_iteration_once(tmp_path):
    train_runs = load_script(SCRIPT)
    # Logged every 50 iterations: an interrupted part to 150 (checkpoint at
    # 100), then its resumption from 100 to 200; an evaluation entry has no
    # iteration time.
    interrupted = [
        dict(iter=50, time=1.0),
        dict(iter=100, time=2.0),
        dict(iter=150, time=9.0),
    ]
    resumed = [
        dict(iter=150, time=3.0),
        dict(step=150, accuracy=10.0),
        dict(iter=200, time=4.0),
    ]
    # 50 × (1 + 2 + 3 + 4): the resumed part's 150 replaces the cut one's.
    assert train_runs.train_loop_seconds(interrupted + resumed) == 500.0
    assert train_runs.train_loop_seconds([dict(step=1, accuracy=1.0)]) is None
