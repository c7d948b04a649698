# Copyright (c) rekd_mm contributors. All rights reserved.
"""Faults during training: a save that fails or is killed half-way, a
``kill -9`` of the training process, a NaN on one rank only."""
import os
import os.path as osp
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from types import SimpleNamespace

import pytest
import torch
from mmengine.config import Config
from mmengine.fileio import LocalBackend
from mmengine.logging import MessageHub
from mmengine.runner import Runner

import rekd_mm  # noqa: F401  (registers the hooks and the safe globals)
from rekd_mm.engine.hooks import LossGuardHook
from rekd_mm.engine.hooks.atomic_checkpoint_hook import TMP_SUFFIX
from tests.dist_utils import run_distributed
from tests.toy_configs import REPO_ROOT, toy_runner_cfg

DEMO = osp.join(REPO_ROOT, 'configs',
                'rekd_mobilenet-v2-t-resnet18_1xb64-400i_fashion-mnist.py')


def _toy_cfg(work_dir, hook_type, max_iters=5, **overrides):
    """Toy ReKD saving a checkpoint every iteration, keeping only one: the
    setting where mmengine's CheckpointHook is most fragile."""
    cfg = toy_runner_cfg(
        work_dir,
        max_iters=max_iters,
        miner_hook=dict(init_iter=1, source='queue'),
        **overrides)
    cfg['default_hooks']['checkpoint'] = dict(
        type=hook_type, by_epoch=False, interval=1, max_keep_ckpts=1)
    return Config(cfg)


def _last_checkpoint(work_dir):
    with open(osp.join(work_dir, 'last_checkpoint')) as f:
        return f.read().strip()


def _fail_third_put(monkeypatch):
    """The 3rd checkpoint write stops half-way with a full disk."""
    real_put = LocalBackend.put
    calls = []

    def put(self, obj, filepath):
        calls.append(filepath)
        if len(calls) == 3:
            with open(filepath, 'wb') as f:
                f.write(obj[:len(obj) // 2])
            raise OSError(28, 'No space left on device')
        return real_put(self, obj, filepath)

    monkeypatch.setattr(LocalBackend, 'put', put)


@pytest.mark.parametrize('hook_type',
                         ['CheckpointHook', 'AtomicCheckpointHook'])
def test_failed_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch,
                                                   hook_type):
    work_dir = str(tmp_path)
    _fail_third_put(monkeypatch)
    runner = Runner.from_cfg(_toy_cfg(work_dir, hook_type))
    with pytest.raises(OSError, match='No space left'):
        runner.train()
    last = _last_checkpoint(work_dir)
    assert last == osp.join(work_dir, 'iter_2.pth')
    if hook_type == 'CheckpointHook':
        # mmengine's own hook deletes iter_2.pth before saving iter_3.pth
        # in place: last_checkpoint names a deleted file, iter_3.pth is
        # truncated. This is the failure the atomic hook exists for.
        assert not osp.exists(last)
        with pytest.raises(RuntimeError):
            torch.load(osp.join(work_dir, 'iter_3.pth'))
        return
    assert torch.load(last)['meta']['iter'] == 2
    assert sorted(
        f for f in os.listdir(work_dir)
        if f.endswith(('.pth', TMP_SUFFIX))) == ['iter_2.pth']


_KILLED_SAVE = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, {repo!r})
    from mmengine.fileio import LocalBackend
    from mmengine.runner import Runner
    from tests.test_engine.test_faults import _toy_cfg
    calls = []
    real_put = LocalBackend.put
    def put(self, obj, filepath):
        calls.append(filepath)
        if len(calls) == 3:  # power cut half-way through iter_3.pth
            with open(filepath, 'wb') as f:
                f.write(obj[:len(obj) // 2])
                f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        return real_put(self, obj, filepath)
    LocalBackend.put = put
    Runner.from_cfg(_toy_cfg({work_dir!r}, 'AtomicCheckpointHook')).train()
""")


def test_kill_during_save_then_resume(tmp_path):
    work_dir = str(tmp_path)
    script = _KILLED_SAVE.format(repo=REPO_ROOT, work_dir=work_dir)
    proc = subprocess.run([sys.executable, '-c', script],
                          cwd=REPO_ROOT,
                          env=dict(os.environ, OMP_NUM_THREADS='1'),
                          capture_output=True,
                          text=True,
                          timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    # Killed mid-write: only the hidden temporary file is half-written.
    assert os.listdir(work_dir).count(f'.iter_3.pth{TMP_SUFFIX}') == 1
    assert _last_checkpoint(work_dir) == osp.join(work_dir, 'iter_2.pth')
    assert torch.load(osp.join(work_dir, 'iter_2.pth'))['meta']['iter'] == 2

    runner = Runner.from_cfg(
        _toy_cfg(work_dir, 'AtomicCheckpointHook', resume=True))
    runner.train()
    assert runner.iter == 5
    assert _last_checkpoint(work_dir) == osp.join(work_dir, 'iter_5.pth')
    assert sorted(
        f for f in os.listdir(work_dir)
        if f.endswith(('.pth', TMP_SUFFIX))) == ['iter_5.pth']


def _iteration_losses(log):
    """``{iteration: 'loss: ...'}`` from mmengine's training log lines."""
    return {
        int(m.group(1)): m.group(2)
        for m in re.finditer(r'Iter\(train\) \[\s*(\d+)/\d+\].*?(loss: \S+)',
                             log)
    }


def test_kill_9_during_training_then_resume_auto(tmp_path):
    """The demo config, shrunk, killed with SIGKILL after a checkpoint, then
    ``tools/train.py --resume`` (auto): training reaches its last iteration
    from the checkpoint with the bank restored, not clustered again."""
    work_dir = str(tmp_path / 'work')
    log1, log2 = tmp_path / 'run1.log', tmp_path / 'run2.log'
    cmd = [
        sys.executable,
        osp.join(REPO_ROOT, 'tools', 'train.py'), DEMO, '--work-dir', work_dir,
        '--no-persistent-workers', '--cfg-options', 'model.queue_len=256',
        'model.miner.num_prototypes=8', 'train_dataloader.batch_size=16',
        'train_dataloader.num_workers=0', 'train_cfg.max_iters=12',
        'param_scheduler.0.T_max=12', 'param_scheduler.0.end=12',
        'custom_hooks.0.init_iter=2',
        'default_hooks.checkpoint.type=AtomicCheckpointHook',
        'default_hooks.checkpoint.interval=2',
        'default_hooks.logger.interval=1'
    ]
    env = dict(os.environ, OMP_NUM_THREADS='1')
    with open(log1, 'w') as out:
        proc = subprocess.Popen(
            cmd, cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.time() + 300
        # Kill once iteration 5 is logged, i.e. after the save at 4 (the
        # bank was clustered at 2), and before the run ends.
        while proc.poll() is None and time.time() < deadline:
            if 'Iter(train) [ 5/12]' in log1.read_text():
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, log1.read_text()[-3000:]
    resumed_from = _last_checkpoint(work_dir)
    start = int(re.search(r'iter_(\d+)\.pth$', resumed_from).group(1))
    assert start >= 4
    assert torch.load(resumed_from)['state_dict']['miner.initialized']

    with open(log2, 'w') as out:
        subprocess.run(
            cmd + ['--resume'],
            cwd=REPO_ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=300,
            check=True)
    first, second = log1.read_text(), log2.read_text()
    assert first.count('RelationMinerHook: clustered') == 1
    assert f'resumed epoch: 0, iter: {start}' in second
    assert 'RelationMinerHook: clustered' not in second
    final = torch.load(osp.join(work_dir, 'iter_12.pth'))
    assert final['meta']['iter'] == 12
    assert bool(final['state_dict']['miner.initialized'])
    assert int(final['state_dict']['miner.last_cluster_iter']) == 2
    # The resumed run repeats the iterations the killed one had done after
    # the checkpoint exactly (same data order, same state).
    before, after = _iteration_losses(first), _iteration_losses(second)
    redone = [i for i in sorted(before) if i > start]
    assert min(after) == start + 1 and max(after) == 12
    assert [before[i] for i in redone] == [after[i] for i in redone]
    # The demo's checkpoints are large (~170 MB): do not keep them around.
    shutil.rmtree(work_dir)


def _guard_on_rank(rank, world_size):
    """Rank 1 sees a NaN loss, rank 0 a finite one."""
    hook = LossGuardHook()
    runner = SimpleNamespace(
        iter=6, message_hub=MessageHub.get_instance(f'guard{rank}'))
    runner.message_hub.update_info('last_ckpt', 'work_dirs/x/iter_4.pth')
    loss = torch.tensor(float('nan') if rank == 1 else 1.0)
    outputs = dict(loss=loss + 1, loss_relation=loss, loss_teacher=loss * 0)
    try:
        hook.after_train_iter(runner, 0, None, outputs)
    except FloatingPointError as err:
        return str(err)
    return None


def test_loss_guard_stops_every_rank_at_the_same_iteration():
    healthy, sick = run_distributed(_guard_on_rank, world_size=2)
    assert sick is not None and 'loss_relation is nan at iter 7' in sick
    assert healthy is not None and 'on another rank at iter 7' in healthy
    assert 'work_dirs/x/iter_4.pth' in healthy
