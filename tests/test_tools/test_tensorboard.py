# Copyright (c) rekd_mm contributors. All rights reserved.
"""tools/train.py --tensorboard: the losses and ReKD's relation statistics
reach TensorBoard event files (optional extra: requirements/optional.txt)."""
import glob
import math
import os
import os.path as osp
import subprocess
import sys

from tests.toy_configs import REPO_ROOT

TRAIN = osp.join(REPO_ROOT, 'tools', 'train.py')
DEMO = osp.join(REPO_ROOT, 'configs',
                'rekd_mobilenet-v2-t-resnet18_1xb64-400i_fashion-mnist.py')
# Four iterations of the demo at batch 8; the bank is clustered at iter 2.
TINY = [
    'train_cfg.max_iters=4', 'model.queue_len=256',
    'model.miner.num_prototypes=8', 'custom_hooks.0.init_iter=2',
    'train_dataloader.batch_size=8', 'train_dataloader.num_workers=0',
    'train_dataloader.persistent_workers=False',
    'default_hooks.logger.interval=1', 'default_hooks.checkpoint=None'
]
RELATION_STATS = ('proto_assigned_ratio', 'relation_pos_per_anchor',
                  'proto_in_use', 'relation_precision')


def test_tensorboard_flag_writes_losses_and_relation_statistics(tmp_path):
    # Fails (ImportError) where tensorboard is not installed: it is a test
    # dependency, see requirements/optional.txt.
    from tensorboard.backend.event_processing.event_accumulator import \
        EventAccumulator

    work_dir = tmp_path / 'work'
    env = dict(
        os.environ,
        OMP_NUM_THREADS='1',
        PYTHONWARNINGS='ignore',
        CUDA_VISIBLE_DEVICES='')
    result = subprocess.run([
        sys.executable, TRAIN, DEMO, '--work-dir',
        str(work_dir), '--tensorboard', '--cfg-options', *TINY
    ],
                            cwd=REPO_ROOT,
                            env=env,
                            capture_output=True,
                            text=True,
                            timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    events = glob.glob(
        osp.join(work_dir, '*', 'vis_data', 'events.out.tfevents.*'))
    assert len(events) == 1
    acc = EventAccumulator(events[0])
    acc.Reload()
    tags = set(acc.Tags()['scalars'])
    for tag in ('loss', 'loss_teacher', 'loss_relation', 'lr',
                *RELATION_STATS):
        assert tag in tags, (tag, sorted(tags))
    # One value per logged iteration, and the statistics are live once the
    # bank exists (iter 2): prototypes in use, a finite precision.
    last = {tag: acc.Scalars(tag)[-1] for tag in RELATION_STATS}
    assert [e.step for e in acc.Scalars('proto_in_use')] == [1, 2, 3, 4]
    assert last['proto_in_use'].step == 4
    assert last['proto_in_use'].value >= 1
    assert 0 < last['proto_assigned_ratio'].value <= 1
    assert math.isfinite(last['relation_precision'].value)
    # The default local backend still writes its scalars.json.
    assert glob.glob(osp.join(work_dir, '*', 'vis_data', 'scalars.json'))
