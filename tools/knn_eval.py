# Copyright (c) rekd_mm contributors. All rights reserved.
"""Weighted-kNN evaluation (InstDisc) of a checkpoint's student or teacher.

Example::

    python tools/knn_eval.py \
        configs/rekd_mobilenet-v2-t-resnet18_1xb64-400i_fashion-mnist.py \
        work_dirs/demo/iter_400.pth --prefix teacher.backbone. \
        --out work_dirs/demo/knn_teacher.json
"""
import argparse

from mmengine.config import Config, DictAction

import rekd_mm  # noqa: F401  (registers modules, checkpoint safe globals)
from rekd_mm.evaluation import run_knn_eval


def parse_args():
    parser = argparse.ArgumentParser(
        description='Weighted kNN accuracy of a pretrained backbone on the '
        "config's knn_train_dataloader / knn_val_dataloader")
    parser.add_argument('config', help='the pretraining config')
    parser.add_argument('checkpoint', help='the checkpoint file')
    parser.add_argument(
        '--prefix',
        default='backbone.',
        help="key prefix of the backbone in the checkpoint: 'backbone.' "
        "(student) or 'teacher.backbone.' (teacher)")
    parser.add_argument(
        '--k',
        type=int,
        nargs='+',
        default=[200, 20],
        help='numbers of neighbours')
    parser.add_argument(
        '--temperature', type=float, default=0.07, help='vote temperature')
    parser.add_argument(
        '--max-train',
        type=int,
        default=None,
        help='random subset of the memory bank (default: all)')
    parser.add_argument(
        '--max-val',
        type=int,
        default=None,
        help='random subset of the queries (default: all)')
    parser.add_argument('--seed', type=int, default=0, help='subset seed')
    parser.add_argument('--out', help='write the results as JSON here')
    parser.add_argument(
        '--force', action='store_true', help='replace an existing --out file')
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override config settings, e.g. '
        'knn_train_dataloader.num_workers=0')
    return parser.parse_args()


def main():
    args = parse_args()
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    run_knn_eval(
        cfg,
        args.checkpoint,
        prefix=args.prefix,
        k=args.k,
        temperature=args.temperature,
        max_train=args.max_train,
        max_val=args.max_val,
        out=args.out,
        seed=args.seed,
        force=args.force)


if __name__ == '__main__':
    main()
