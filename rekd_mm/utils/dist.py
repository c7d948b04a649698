# Copyright (c) rekd_mm contributors. All rights reserved.
"""Distributed training on CPU-only machines with mmengine's Runner.

mmengine 0.10.7 assumes a GPU per process as soon as a launcher is given:
``init_dist`` calls ``torch.cuda.set_device(LOCAL_RANK)`` ("Found no NVIDIA
driver") and ``Runner.wrap_model`` passes ``device_ids=[LOCAL_RANK]`` to
``DistributedDataParallel``, which torch rejects for a CPU module. The Runner
only initialises the process group when none exists and only passes
``device_ids`` when ``model_wrapper_cfg`` does not, so
:func:`setup_cpu_distributed` prepares both before the Runner is built. On a
machine with CUDA it does nothing and mmengine's own (nccl) path runs
unchanged.
"""
import copy
import datetime
import logging
import os
import subprocess
import sys
from typing import Any

import torch
import torch.distributed as torch_dist
from mmengine.config import Config
from mmengine.logging import print_log
from mmengine.model import MMDistributedDataParallel, revert_sync_batchnorm
from mmengine.model.utils import _BatchNormXd
from mmengine.registry import MODEL_WRAPPERS
from mmpretrain.registry import MODEL_WRAPPERS as MMPRETRAIN_MODEL_WRAPPERS
from mmpretrain.registry import MODELS as MMPRETRAIN_MODELS
from torch.nn.parallel import DistributedDataParallel

__all__ = [
    'setup_cpu_distributed', 'teardown_cpu_distributed', 'revert_sync_bn_cfg',
    'CPUDistributedDataParallel'
]

# Norm layer types that only run on GPUs (torch's and mmcv's SyncBN).
SYNC_BN_TYPES = ('SyncBN', 'MMSyncBN')
# Arguments that only the synchronised layers take.
SYNC_BN_ONLY_ARGS = ('process_group', 'group', 'stats_mode')

# What a SyncBN config becomes without CUDA: mmengine's ``_BatchNormXd``, the
# layer its ``revert_sync_batchnorm`` turns SyncBN modules into. Like SyncBN
# it accepts any input dimension, e.g. the (N, C) features of mmpretrain's
# ``NonLinearNeck`` (MoCo v3, SimCLR, BYOL), which the registered 'BN'
# (``nn.BatchNorm2d``) refuses. mmengine registers no config type for it, and
# has no config-level counterpart of ``revert_sync_batchnorm``, hence this
# type and :func:`revert_sync_bn_cfg`. Scoped, so that it builds whatever the
# default scope (none, mmpretrain or mmdet).
MMPRETRAIN_MODELS.register_module('BNXd', module=_BatchNormXd)
CPU_BN_TYPE = 'mmpretrain.BNXd'


def revert_sync_bn_cfg(node: Any) -> int:
    """Replace SyncBN norm configs by a BN that runs on CPU, in place.

    The new type, ``'mmpretrain.BNXd'``, builds mmengine's ``_BatchNormXd``:
    batch normalisation over every dimension but the channels, for inputs of
    any dimension (as SyncBN), with the same parameters, buffers and state
    dict keys. Arguments that only synchronised layers take
    (``process_group``, ``group``, ``stats_mode``) are dropped.

    Args:
        node (Any): A config node (dict, list or leaf), e.g. ``cfg.model``.

    Returns:
        int: How many norm configs were changed.
    """
    changed = 0
    if isinstance(node, dict):
        if node.get('type') in SYNC_BN_TYPES:
            node['type'] = CPU_BN_TYPE
            for key in SYNC_BN_ONLY_ARGS:
                node.pop(key, None)
            changed += 1
        for value in node.values():
            changed += revert_sync_bn_cfg(value)
    elif isinstance(node, (list, tuple)):
        for value in node:
            changed += revert_sync_bn_cfg(value)
    return changed


def _set_env_from_launcher(launcher: str) -> None:
    """Fill ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_*`` the way
    mmengine's ``init_dist`` does for each launcher (``torchrun`` already
    sets them for ``pytorch``)."""
    if launcher == 'mpi':
        os.environ['RANK'] = os.environ['OMPI_COMM_WORLD_RANK']
        os.environ['WORLD_SIZE'] = os.environ['OMPI_COMM_WORLD_SIZE']
        os.environ['LOCAL_RANK'] = os.environ['OMPI_COMM_WORLD_LOCAL_RANK']
        if 'MASTER_ADDR' not in os.environ:
            raise KeyError('--launcher mpi needs the environment variable '
                           'MASTER_ADDR (address of the rank-0 host)')
    elif launcher == 'slurm':
        os.environ['RANK'] = os.environ['SLURM_PROCID']
        os.environ['WORLD_SIZE'] = os.environ['SLURM_NTASKS']
        os.environ['LOCAL_RANK'] = os.environ.get('SLURM_LOCALID', '0')
        if 'MASTER_ADDR' not in os.environ:
            node_list = os.environ['SLURM_NODELIST']
            os.environ['MASTER_ADDR'] = subprocess.getoutput(
                f'scontrol show hostname {node_list} | head -n1')
    elif launcher != 'pytorch':
        raise ValueError(f'unknown launcher {launcher!r}')
    os.environ.setdefault('MASTER_PORT', '29500')
    missing = [
        name for name in ('RANK', 'WORLD_SIZE', 'MASTER_ADDR')
        if name not in os.environ
    ]
    if missing:
        raise KeyError(
            f'--launcher {launcher} needs the environment variables '
            f'{missing}; start the script with torchrun (tools/dist_train.sh)'
            ' or use --launcher none for a single process.')


@MMPRETRAIN_MODEL_WRAPPERS.register_module()
class CPUDistributedDataParallel(MMDistributedDataParallel):
    """mmengine's DDP wrapper for CPU (gloo) processes.

    Rewriting the config's SyncBN entries (:func:`revert_sync_bn_cfg`) misses
    the ones a module picks by default (mmpretrain's ``NonLinearNeck`` and
    ``MoCoV3``'s projectors default to ``norm_cfg=dict(type='SyncBN')``), and
    torch's DDP refuses ``SyncBatchNorm`` on CPU. mmengine's Runner only
    reverts such layers when it is *not* distributed, so this wrapper does it
    for the CPU-distributed case, before DDP sees the module.
    """

    def __init__(self, module: torch.nn.Module, **kwargs) -> None:
        super().__init__(module=revert_sync_batchnorm(module), **kwargs)


def setup_cpu_distributed(cfg: Config) -> bool:
    """Make ``cfg.launcher`` work on a machine without CUDA.

    When ``cfg.launcher`` is not ``'none'`` and CUDA is unavailable:

    - SyncBN norm configs in ``cfg.model`` become BN (mmengine's
      ``_BatchNormXd``, see :func:`revert_sync_bn_cfg`), with a warning
      (torch's ``SyncBatchNorm`` only runs on GPUs). Each rank then
      normalises over its own batch, as MoCo's shuffle-BN intends anyway.
      ``cfg.sync_bn`` is dropped for the same reason.
    - ``cfg.env_cfg.dist_cfg.backend`` becomes ``'gloo'`` (``'mpi'`` is
      kept), and the gloo process group is initialised here, so the Runner
      skips its CUDA-only ``init_dist``.
    - ``cfg.model_wrapper_cfg`` is set to :class:`CPUDistributedDataParallel`
      (which also reverts SyncBN layers that modules create by default)
      unless the config already has one (a DDP wrapper of the config gets
      ``device_ids=None`` when it sets none).

    Args:
        cfg (Config): The merged config, with ``launcher`` set. Modified in
            place.

    Returns:
        bool: True when the CPU process group was set up here, False when
        nothing was done (no launcher, CUDA present, or a process group
        already initialised).
    """
    launcher = cfg.get('launcher', 'none')
    if launcher == 'none' or torch.cuda.is_available():
        return False
    if torch_dist.is_available() and torch_dist.is_initialized():
        return False

    num_sync_bn = revert_sync_bn_cfg(cfg.model)
    if num_sync_bn:
        print_log(
            f'No CUDA: {num_sync_bn} SyncBN norm config(s) in the model were '
            f'changed to BN ({CPU_BN_TYPE}: SyncBatchNorm only runs on GPUs); '
            'every rank normalises over its own batch.',
            logger='current',
            level=logging.WARNING)
    if cfg.get('sync_bn'):
        print_log(
            f'No CUDA: ignoring sync_bn={cfg.sync_bn!r} (GPU only).',
            logger='current',
            level=logging.WARNING)
        cfg.sync_bn = None

    env_cfg = cfg.setdefault('env_cfg', {})
    dist_cfg = copy.deepcopy(env_cfg.get('dist_cfg') or {})
    if dist_cfg.get('backend') != 'mpi':
        dist_cfg['backend'] = 'gloo'
    env_cfg['dist_cfg'] = dist_cfg

    kwargs = {
        k: v
        for k, v in dist_cfg.items()
        # Arguments of mmengine's init_dist, not of init_process_group.
        if k not in ('backend', 'init_backend', 'port')
    }
    if dist_cfg.get('port') is not None:
        os.environ['MASTER_PORT'] = str(dist_cfg['port'])
    _set_env_from_launcher(launcher)
    if kwargs.get('timeout') is not None:
        kwargs['timeout'] = datetime.timedelta(seconds=kwargs['timeout'])
    torch_dist.init_process_group(
        backend=dist_cfg['backend'], init_method='env://', **kwargs)

    if cfg.get('model_wrapper_cfg') is None:
        cfg.model_wrapper_cfg = dict(
            # Scoped: the Runner looks wrappers up in mmengine's root
            # registry, and this one lives in mmpretrain's.
            type='mmpretrain.CPUDistributedDataParallel',
            device_ids=None,
            broadcast_buffers=False,
            find_unused_parameters=cfg.get('find_unused_parameters', False))
    else:
        # The Runner gives a DDP wrapper device_ids=[LOCAL_RANK] unless the
        # config sets them.
        wrapper = MODEL_WRAPPERS.get(
            cfg.model_wrapper_cfg.get('type', 'MMDistributedDataParallel'))
        if wrapper is not None and issubclass(wrapper,
                                              DistributedDataParallel):
            cfg.model_wrapper_cfg.setdefault('device_ids', None)
    return True


def teardown_cpu_distributed() -> None:
    """End a process group made by :func:`setup_cpu_distributed` and exit.

    Call it once training has finished and everything is written. Every
    rank waits for the others, the group is destroyed, logs are flushed and
    the process exits with status 0 without running C++ static destructors:
    gloo's worker threads sporadically abort an exiting process ("terminate
    called without an active exception", SIGABRT) after all work is done,
    which torchrun would then report as a failed job.
    """
    if torch_dist.is_available() and torch_dist.is_initialized():
        torch_dist.barrier()
        torch_dist.destroy_process_group()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
