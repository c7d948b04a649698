# Copyright (c) OpenMMLab. All rights reserved.
# Derived from mmpretrain 1.2.0's tools/train.py (Apache-2.0);
# modified by rekd_mm contributors.
"""Train a model with mmengine's Runner: mmpretrain's ``tools/train.py``
plus a data-path preflight and the CPU-distributed set-up of rekd_mm.

Examples::

    # one process (CPU or one GPU)
    python tools/train.py \
        configs/rekd_mobilenet-v2-t-resnet18_1xb64-400i_fashion-mnist.py
    # 8 GPUs
    bash tools/dist_train.sh configs/rekd_mbv2_r50_200e.py 8
    # TensorBoard event files too (pip install -r requirements/optional.txt)
    python tools/train.py CONFIG --tensorboard
    # 2 CPU processes (gloo)
    python -m torch.distributed.run --nproc_per_node=2 tools/train.py \
        CONFIG --launcher pytorch
"""
import argparse
import importlib.util
import os
import os.path as osp
import sys
from copy import deepcopy

from mmengine.config import Config, ConfigDict, DictAction
from mmengine.registry import RUNNERS
from mmengine.runner import Runner
from mmengine.utils import digit_version
from mmengine.utils.dl_utils import TORCH_VERSION

# Registers ReKD's modules and allow-lists mmengine's checkpoint globals for
# torch.load(weights_only=True), which --resume needs under torch>=2.6.
import rekd_mm  # noqa: F401
from rekd_mm.utils import (DataPathError, check_data_roots,
                           setup_cpu_distributed, teardown_cpu_distributed)


def parse_args():
    parser = argparse.ArgumentParser(description='Train a model')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='the dir to save logs and models')
    parser.add_argument(
        '--resume',
        nargs='?',
        type=str,
        const='auto',
        help='If specify checkpoint path, resume from it, while if not '
        'specify, try to auto resume from the latest checkpoint '
        'in the work directory.')
    parser.add_argument(
        '--amp',
        action='store_true',
        help='enable automatic-mixed-precision training')
    parser.add_argument(
        '--no-validate',
        action='store_true',
        help='whether not to evaluate the checkpoint during training')
    parser.add_argument(
        '--auto-scale-lr',
        action='store_true',
        help='whether to auto scale the learning rate according to the '
        'actual batch size and the original batch size.')
    parser.add_argument(
        '--no-pin-memory',
        action='store_true',
        help='whether to disable the pin_memory option in dataloaders.')
    parser.add_argument(
        '--no-persistent-workers',
        action='store_true',
        help='whether to disable the persistent_workers option in dataloaders.'
    )
    parser.add_argument(
        '--tensorboard',
        action='store_true',
        help='also write the logged scalars (losses, relation statistics, '
        'learning rate) to TensorBoard event files under '
        '<work_dir>/<timestamp>/vis_data (needs the optional `tensorboard` '
        'package: pip install -r requirements/optional.txt)')
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override some settings in the used config, the key-value pair '
        'in xxx=yyy format will be merged into config file. If the value to '
        'be overwritten is a list, it should be like key="[a,b]" or key=a,b '
        'It also allows nested list/tuple values, e.g. key="[(a,b),(c,d)]" '
        'Note that the quotation marks are necessary and that no white space '
        'is allowed.')
    parser.add_argument(
        '--launcher',
        choices=['none', 'pytorch', 'slurm', 'mpi'],
        default='none',
        help='job launcher')
    # When using PyTorch version >= 2.0.0, the `torch.distributed.launch`
    # will pass the `--local-rank` parameter to `tools/train.py` instead
    # of `--local_rank`.
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args()
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)

    return args


def add_tensorboard_backend(cfg):
    """Add mmengine's ``TensorboardVisBackend`` to ``cfg.visualizer`` (the
    Runner's default visualizer when the config has none), after checking
    that ``tensorboard`` is installed: mmengine would only fail at the first
    logged scalar."""
    if importlib.util.find_spec('tensorboard') is None:
        sys.exit('tools/train.py: --tensorboard needs the tensorboard '
                 'package: pip install -r requirements/optional.txt')
    visualizer = cfg.get('visualizer') or ConfigDict(
        type='Visualizer', vis_backends=[dict(type='LocalVisBackend')])
    backends = list(visualizer.get('vis_backends') or [])
    if not any('TensorboardVisBackend' in str(backend.get('type'))
               for backend in backends):
        backends.append(dict(type='TensorboardVisBackend'))
    visualizer['vis_backends'] = backends
    cfg.visualizer = visualizer


def merge_args(cfg, args):
    """Merge CLI arguments to config."""
    if args.no_validate:
        cfg.val_cfg = None
        cfg.val_dataloader = None
        cfg.val_evaluator = None

    cfg.launcher = args.launcher

    # work_dir is determined in this priority: CLI > segment in file > filename
    if args.work_dir is not None:
        # update configs according to CLI args if args.work_dir is not None
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir', None) is None:
        # use config filename as default work_dir if cfg.work_dir is None
        cfg.work_dir = osp.join('./work_dirs',
                                osp.splitext(osp.basename(args.config))[0])

    # enable automatic-mixed-precision training
    if args.amp is True:
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.setdefault('loss_scale', 'dynamic')

    # resume training
    if args.resume == 'auto':
        cfg.resume = True
        cfg.load_from = None
    elif args.resume is not None:
        cfg.resume = True
        cfg.load_from = args.resume

    # enable auto scale learning rate
    if args.auto_scale_lr:
        if cfg.get('auto_scale_lr') is None:
            sys.exit(f'tools/train.py: --auto-scale-lr needs auto_scale_lr='
                     f'dict(base_batch_size=...) in {args.config}')
        cfg.auto_scale_lr.enable = True

    if args.tensorboard:
        add_tensorboard_backend(cfg)

    # set dataloader args
    default_dataloader_cfg = ConfigDict(
        pin_memory=True,
        persistent_workers=True,
        collate_fn=dict(type='default_collate'),
    )
    if digit_version(TORCH_VERSION) < digit_version('1.8.0'):
        default_dataloader_cfg.persistent_workers = False

    def set_default_dataloader_cfg(cfg, field):
        if cfg.get(field, None) is None:
            return
        dataloader_cfg = deepcopy(default_dataloader_cfg)
        dataloader_cfg.update(cfg[field])
        cfg[field] = dataloader_cfg
        if args.no_pin_memory:
            cfg[field]['pin_memory'] = False
        if args.no_persistent_workers:
            cfg[field]['persistent_workers'] = False

    set_default_dataloader_cfg(cfg, 'train_dataloader')
    set_default_dataloader_cfg(cfg, 'val_dataloader')
    set_default_dataloader_cfg(cfg, 'test_dataloader')

    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)

    return cfg


def main():
    args = parse_args()

    # load config
    cfg = Config.fromfile(args.config)

    # merge cli arguments to config
    cfg = merge_args(cfg, args)

    # Fail now, naming the config key, rather than from a dataloader worker
    # after the model and hooks are built.
    try:
        check_data_roots(cfg)
    except DataPathError as err:
        sys.exit(f'tools/train.py: {err}')

    # Without CUDA: gloo process group, DDP without device_ids, SyncBN->BN.
    # With CUDA this is a no-op and the Runner initialises nccl itself.
    cpu_distributed = setup_cpu_distributed(cfg)

    # build the runner from config
    if 'runner_type' not in cfg:
        # build the default runner
        runner = Runner.from_cfg(cfg)
    else:
        # build customized runner from the registry
        # if 'runner_type' is set in the cfg
        runner = RUNNERS.build(cfg)

    # start training
    runner.train()

    if cpu_distributed:
        teardown_cpu_distributed()


if __name__ == '__main__':
    main()
