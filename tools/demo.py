# Copyright (c) rekd_mm contributors. All rights reserved.
"""The one-command demo: a short ReKD training on Fashion-MNIST on CPU.

Trains the demo config with mmengine's Runner, then prints the work dir,
the checkpoint, the relation statistics of the last iterations and the
weighted-kNN top-1 on the test split of the student as initialised (the
exact weights training starts from) next to the trained student's, and the
teacher's.
"""
import argparse
import os
import os.path as osp
import time

import torch
from mmengine.config import Config, DictAction
from mmengine.runner import Runner, find_latest_checkpoint, save_checkpoint
from mmpretrain.utils import get_ori_model

import rekd_mm  # noqa: F401  (registers modules, checkpoint safe globals)
from rekd_mm.evaluation import run_knn_eval

# The small4k regime cut to 1000 iterations: the first in which the demo's
# student ends above its initialisation (docs/quality.md).
DEMO_CONFIG = ('configs/rekd_mobilenet-v2-cifar-t-resnet18-cifar_'
               '1xb64-1ki_fashion-mnist.py')
RELATION_STATS = ('proto_assigned_ratio', 'relation_pos_per_anchor',
                  'proto_in_use', 'relation_precision')


def parse_args():
    parser = argparse.ArgumentParser(description='ReKD demo (CPU)')
    parser.add_argument('--config', default=DEMO_CONFIG)
    parser.add_argument('--work-dir', default='work_dirs/demo')
    parser.add_argument(
        '--threads',
        type=int,
        default=2,
        help='torch intra-op threads (the demo machine has 2 cores)')
    parser.add_argument(
        '--knn-max-train',
        type=int,
        default=None,
        help='subsample the kNN memory bank (default: the whole train split)')
    parser.add_argument(
        '--knn-max-val',
        type=int,
        default=None,
        help='subsample the kNN queries (default: the whole test split)')
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override config settings, as in tools/train.py')
    return parser.parse_args()


def main():
    args = parse_args()
    torch.set_num_threads(args.threads)
    cfg = Config.fromfile(args.config)
    cfg.work_dir = args.work_dir
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)

    runner = Runner.from_cfg(cfg)
    # The student as training will start from: mmengine initialises the
    # weights once (a second init_weights() in runner.train() is a no-op).
    model = get_ori_model(runner.model)
    model.init_weights()
    untrained = osp.join(runner.work_dir, 'untrained_student.pth')
    save_checkpoint(
        {
            'state_dict': {
                f'backbone.{k}': v.detach().clone()
                for k, v in model.backbone.state_dict().items()
            }
        }, untrained)
    start = time.time()
    runner.train()
    train_time = time.time() - start

    hub = runner.message_hub
    stats = {}
    for name in RELATION_STATS:
        key = f'train/{name}'
        if key in hub.log_scalars:
            # Mean over the logger's window, as printed in the log.
            stats[name] = hub.log_scalars[key].mean(
                cfg.default_hooks.logger.interval)
    checkpoint = find_latest_checkpoint(runner.work_dir)

    knn = dict(
        untrained=run_knn_eval(
            cfg,
            untrained,
            prefix='backbone.',
            max_train=args.knn_max_train,
            max_val=args.knn_max_val))
    for who, prefix in (('student', 'backbone.'), ('teacher',
                                                   'teacher.backbone.')):
        knn[who] = run_knn_eval(
            cfg,
            checkpoint,
            prefix=prefix,
            max_train=args.knn_max_train,
            max_val=args.knn_max_val)

    print('\n' + '=' * 72)
    print('ReKD demo finished')
    print(f'  config      : {args.config}')
    print(f'  work dir    : {osp.abspath(runner.work_dir)}')
    print(f'  checkpoint  : {checkpoint}')
    print(f'  train time  : {train_time:.0f} s '
          f'({runner.iter} iterations, {args.threads} threads)')
    print('  relation statistics (mean of the last logged window):')
    for name, value in stats.items():
        print(f'    {name:<24s}: {value:.4f}')
    for who, result in knn.items():
        scores = ', '.join(f'{k}: {v:.2f}' for k, v in result.items()
                           if 'top' in k)
        print(f'  {who:9s} kNN on the test split: {scores}')
    gain = knn['student']['k200_top1'] - knn['untrained']['k200_top1']
    print(f'  the student learned: kNN top-1 (k=200) '
          f"{knn['untrained']['k200_top1']:.2f} untrained -> "
          f"{knn['student']['k200_top1']:.2f} trained ({gain:+.2f})")
    print('=' * 72)


if __name__ == '__main__':
    os.environ.setdefault('OMP_NUM_THREADS', '2')
    main()
