# Copyright (c) rekd_mm contributors. All rights reserved.
"""Diagnose ReKD's mined relations on labelled data.

Runs the teacher's momentum encoder of a ReKD checkpoint over the config's
``knn_val_dataloader``, assigns every embedding with the checkpoint's
prototype bank and writes to ``--out-dir``:

- ``prototype_grid.png``: the most-used prototypes, one row each, with their
  most similar images (green frame: the row's majority class, red: other);
- ``prototype_usage.png``: the usage of every prototype and the histogram of
  nearest-prototype similarities against the threshold Θ;
- ``relation_diagnostics.json``: pairwise relation precision (same-prototype
  pairs with the same label) and recall (same-label pairs in the same
  prototype), usage statistics and the top prototypes.

Example::

    python tools/analysis_tools/relation_diagnostics.py \
        configs/rekd_mobilenet-v2-t-resnet18_1xb64-400i_fashion-mnist.py \
        work_dirs/demo/iter_400.pth --out-dir work_dirs/demo/relations
"""
import argparse

from mmengine.config import Config, DictAction

import rekd_mm  # noqa: F401  (registers modules, checkpoint safe globals)
from rekd_mm.evaluation import run_relation_diagnostics


def parse_args():
    parser = argparse.ArgumentParser(
        description='Relation-miner diagnostics of a ReKD checkpoint')
    parser.add_argument('config', help='the ReKD config')
    parser.add_argument('checkpoint', help='the ReKD checkpoint')
    parser.add_argument('--out-dir', required=True, help='output folder')
    parser.add_argument(
        '--max-samples',
        type=int,
        default=2000,
        help='random subset of knn_val_dataloader (0: all)')
    parser.add_argument(
        '--rows', type=int, default=8, help='prototypes in the grid')
    parser.add_argument(
        '--cols', type=int, default=12, help='images per prototype')
    parser.add_argument('--seed', type=int, default=0, help='subset seed')
    parser.add_argument(
        '--force',
        action='store_true',
        help='replace existing outputs in --out-dir')
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override config settings')
    return parser.parse_args()


def main():
    args = parse_args()
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    run_relation_diagnostics(
        cfg,
        args.checkpoint,
        args.out_dir,
        max_samples=args.max_samples or None,
        rows=args.rows,
        cols=args.cols,
        seed=args.seed,
        force=args.force)


if __name__ == '__main__':
    main()
