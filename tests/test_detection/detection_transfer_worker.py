# Copyright (c) rekd_mm contributors. All rights reserved.
"""Run a few iterations of a detection-transfer config; report as JSON.

Runs in the detection venv (``.venv-det``, mmcv with ops + mmdet 3.3.0),
started by ``test_detection_transfer.py`` from the main venv, which has no
mmdet. The last line of stdout is ``RESULT <json>`` with:

- ``iters``: the iterations run, and ``losses``: each iteration's logged
  losses;
- ``num_checked``: the checkpoint's floating-point ``backbone.*`` tensors;
- ``differ_after_init``: those of them that differ from the detector's
  backbone right after ``init_weights`` (before the first step);
- ``equal_in_random_init``: those of them equal to the backbone of the same
  detector initialised without the checkpoint.

Usage: python detection_transfer_worker.py CONFIG CHECKPOINT DATA_ROOT
WORK_DIR [MAX_ITERS]
"""
import json
import math
import sys

import torch
from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.runner import Runner
from mmpretrain.utils import get_ori_model

__all__ = ['main']


class _RecordHook(Hook):
    """Keep the backbone's state at ``before_train`` and the losses."""

    # After StrictPretrainedCheckHook (VERY_HIGH) and every other hook.
    priority = 'LOWEST'

    def __init__(self):
        self.init_state = None
        self.losses = []

    def before_train(self, runner):
        # before_train follows Runner._init_model_weights() and
        # load_or_resume(), and precedes the first step.
        backbone = get_ori_model(runner.model).backbone
        self.init_state = {
            k: v.detach().clone()
            for k, v in backbone.state_dict().items()
        }

    def after_train_iter(self,
                         runner,
                         batch_idx,
                         data_batch=None,
                         outputs=None):
        self.losses.append({
            k: float(v.detach()) if torch.is_tensor(v) else float(v)
            for k, v in outputs.items()
        })


def _shrink(cfg, data_root, work_dir, max_iters, scale=(128, 128)):
    """Tiny data, a few iterations, no evaluation or checkpoints."""
    cfg.work_dir = work_dir
    cfg.log_level = 'WARNING'
    loader = cfg.train_dataloader
    loader.batch_size = 2
    loader.num_workers = 0
    loader.persistent_workers = False
    loader.dataset.data_root = data_root
    loader.dataset.ann_file = 'annotations.json'
    loader.dataset.data_prefix = dict(img='images/')
    for step in loader.dataset.pipeline:
        if step['type'] == 'Resize':
            step['scale'] = scale
    cfg.train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters)
    for key in ('val', 'test'):
        cfg[f'{key}_cfg'] = None
        cfg[f'{key}_dataloader'] = None
        cfg[f'{key}_evaluator'] = None
    cfg.param_scheduler = None
    cfg.default_hooks.checkpoint = None
    cfg.default_hooks.logger = dict(type='LoggerHook', interval=1)
    cfg.randomness = dict(seed=0)
    return cfg


def main(config, checkpoint, data_root, work_dir, max_iters=3):
    cfg = Config.fromfile(config)
    cfg.model.backbone.init_cfg.checkpoint = checkpoint
    cfg = _shrink(cfg, data_root, work_dir, max_iters)
    runner = Runner.from_cfg(cfg)
    record = _RecordHook()
    runner.register_hook(record)
    runner.train()

    ckpt = torch.load(checkpoint, map_location='cpu')['state_dict']
    expected = {
        k[len('backbone.'):]: v
        for k, v in ckpt.items()
        if k.startswith('backbone.') and v.is_floating_point()
    }
    differ_after_init = [
        k for k, v in expected.items()
        if not torch.equal(record.init_state[k], v)
    ]

    # The same detector without the checkpoint: shows that the comparison
    # above could fail.
    from mmdet.registry import MODELS
    random_cfg = cfg.model.copy()
    random_cfg.backbone.init_cfg = None
    torch.manual_seed(1)
    random_model = MODELS.build(random_cfg)
    random_model.init_weights()
    random_state = random_model.backbone.state_dict()
    equal_in_random = [
        k for k, v in expected.items() if torch.equal(random_state[k], v)
    ]

    result = dict(
        iters=runner.iter,
        losses=record.losses,
        all_finite=all(
            math.isfinite(v) for it in record.losses for v in it.values()),
        num_checked=len(expected),
        differ_after_init=differ_after_init,
        equal_in_random_init=equal_in_random,
        backbone_type=type(get_ori_model(runner.model).backbone).__module__ +
        '.' + type(get_ori_model(runner.model).backbone).__name__)
    print('RESULT ' + json.dumps(result))


if __name__ == '__main__':
    args = sys.argv[1:]
    if len(args) not in (4, 5):
        raise SystemExit(__doc__)
    main(*args[:4], *(int(a) for a in args[4:]))
