# Copyright (c) rekd_mm contributors. All rights reserved.
"""tools/demo.py, shrunk: it prints the untrained student's kNN next to the
trained one's, from the exact weights training started from."""
import os
import os.path as osp
import re
import subprocess
import sys

import torch

from tests.toy_configs import REPO_ROOT


def test__demo_prints_untrained_next_to_trained_knn(tmp_path):
    work = tmp_path / 'demo'
    cmd = [
        sys.executable, 'tools/demo.py', '--work-dir',
        str(work), '--threads', '1', '--knn-max-train', '200', '--knn-max-val',
        '100', '--cfg-options', 'train_cfg.max_iters=4',
        'train_dataloader.batch_size=8', 'model.queue_len=64',
        'model.miner.num_prototypes=8', 'custom_hooks.1.init_iter=2',
        'train_dataloader.num_workers=0',
        'train_dataloader.persistent_workers=False',
        'knn_train_dataloader.num_workers=0',
        'knn_val_dataloader.num_workers=0', 'default_hooks.logger.interval=1'
    ]
    proc = subprocess.run(
        cmd,
        cwd=REPO_ROOT,
        env=dict(os.environ, OMP_NUM_THREADS='1'),
        capture_output=True,
        text=True,
        timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    line = re.search(
        r'kNN top-1 \(k=200\) ([\d.]+) untrained -> ([\d.]+) trained '
        r'\(([+-][\d.]+)\)', proc.stdout)
    assert line, proc.stdout[-2000:]
    before, after, gain = map(float, line.groups())
    assert abs(after - before - gain) < 0.011

    # The untrained file is the student before the first step: training
    # changed every conv weight of it (SGD with weight decay).
    untrained = torch.load(
        osp.join(work, 'untrained_student.pth'),
        weights_only=True)['state_dict']
    trained = torch.load(
        osp.join(work, 'iter_4.pth'), weights_only=False)['state_dict']
    key = 'backbone.conv1.conv.weight'
    assert not torch.equal(untrained[key], trained[key])
    assert set(untrained) == {k for k in trained if k.startswith('backbone.')}
