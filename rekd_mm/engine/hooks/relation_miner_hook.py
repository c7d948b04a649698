# Copyright (c) rekd_mm contributors. All rights reserved.
import math
import random
from contextlib import contextmanager
from typing import Optional, Sequence, Union

import numpy as np
import torch
from mmengine.dataset import InfiniteSampler
from mmengine.dist import get_world_size, is_main_process
from mmengine.hooks import Hook
from mmengine.logging import MMLogger
from mmengine.runner import Runner
from mmengine.utils import ProgressBar
from mmpretrain.registry import HOOKS
from mmpretrain.utils import get_ori_model

from rekd_mm.models.utils.spherical_kmeans import check_kmeans_cfg
from rekd_mm.models.utils.state_check import check_state_for_training


@HOOKS.register_module()
class RelationMinerHook(Hook):
    """Schedule the initialisation and re-clustering of ReKD's prototype
    bank.

    The bank's state lives in the model (buffers), so the hook only decides
    *when* to cluster: once, at ``init_epoch`` or ``init_iter``, and then
    optionally every ``recluster_interval`` iterations or epochs. A bank
    restored from a checkpoint is never initialised again; a run resumed
    before the initialisation point initialises it when that point comes.

    Args:
        init_epoch (int, optional): Epoch at whose start the bank is
            initialised (0 = the start of training, for an offline teacher;
            a few epochs for an online teacher to warm up). Mutually
            exclusive with ``init_iter``. Defaults to None.
        init_iter (int, optional): Iteration at which the bank is
            initialised. Defaults to None. When both are None the bank is
            initialised at the start of training.
        source (str): Embeddings to cluster: ``'queue'`` (the teacher queue,
            no extra pass) or ``'dataset'`` (a pass of the teacher's momentum
            encoder over ``init_dataloader``, with a progress bar).
            Defaults to ``'queue'``.
        init_dataloader (dict, optional): Dataloader config for
            ``source='dataset'``. Defaults to None, which uses the training
            dataloader (first view of every sample).
        recluster_interval (int, optional): Re-cluster every this many epochs
            (``by_epoch=True``) or iterations. Defaults to None (never).
        by_epoch (bool): Unit of ``recluster_interval``. Defaults to True.
        kmeans_cfg (dict, optional): Arguments of ``spherical_kmeans``
            (``num_iters``, ``init``, ``seed``, ``max_seed_pool``,
            ``chunk_size``, ``tol``). Defaults to
            ``dict(num_iters=20, seed=0)``.
        allow_no_mining (bool): Let the run finish without ever clustering
            the bank, i.e. train the student and the teacher as two MoCo v2
            (an ablation). Otherwise a first clustering at or after the end
            of training (``init_iter``/``init_epoch`` >= the run's length)
            is an error before iteration 1. Defaults to False.
        reinit_mismatched_state (bool): When the checkpoint of
            ``load_from``/``--resume`` holds a bank or queues that do not fit
            the config (``model.miner.num_prototypes``, ``model.queue_len``,
            ``model.feat_dim``, ``model.teacher_feat_dim``,
            ``model.miner.center``, the global batch),
            start the bank and both queues afresh (the bank is clustered
            again at this hook's schedule) instead of stopping with the key
            and both values. Defaults to False.
    """

    priority = 'NORMAL'

    def __init__(self,
                 init_epoch: Optional[int] = None,
                 init_iter: Optional[int] = None,
                 source: str = 'queue',
                 init_dataloader: Optional[dict] = None,
                 recluster_interval: Optional[int] = None,
                 by_epoch: bool = True,
                 kmeans_cfg: Optional[dict] = None,
                 allow_no_mining: bool = False,
                 reinit_mismatched_state: bool = False) -> None:
        if init_epoch is not None and init_iter is not None:
            raise ValueError('RelationMinerHook: give init_epoch or '
                             'init_iter, not both')
        if source not in ('queue', 'dataset'):
            raise ValueError("RelationMinerHook: source must be 'queue' or "
                             f"'dataset', got {source!r}")
        for name, value in (('init_epoch', init_epoch), ('init_iter',
                                                         init_iter)):
            if value is not None and value < 0:
                raise ValueError(f'RelationMinerHook: {name} must be >= 0, '
                                 f'got {value}')
        if recluster_interval is not None and recluster_interval < 1:
            raise ValueError('RelationMinerHook: recluster_interval must be '
                             f'>= 1, got {recluster_interval}')
        self.init_epoch = init_epoch
        self.init_iter = init_iter
        self.source = source
        self.init_dataloader = init_dataloader
        self.recluster_interval = recluster_interval
        self.by_epoch = by_epoch
        self.kmeans_cfg = dict(num_iters=20, seed=0)
        self.kmeans_cfg.update(kmeans_cfg or {})
        check_kmeans_cfg(self.kmeans_cfg)
        for name, value in (('by_epoch', by_epoch), ('allow_no_mining',
                                                     allow_no_mining),
                            ('reinit_mismatched_state',
                             reinit_mismatched_state)):
            if not isinstance(value, bool):
                raise TypeError(f'RelationMinerHook: {name} must be True or '
                                f'False, got {value!r}')
        self.allow_no_mining = allow_no_mining
        self.reinit_mismatched_state = reinit_mismatched_state
        self._init_at = 0
        self._recluster_every = None

    def _iters_per_epoch(self, runner: Runner) -> int:
        """Iterations of one pass of all ranks over the training set."""
        loader = runner.train_dataloader
        if not isinstance(loader.sampler, InfiniteSampler):
            return len(loader)  # DefaultSampler: this rank's share
        # An InfiniteSampler's len() is the whole data set, not this rank's
        # share: count its share as DefaultSampler does (rounded up).
        per_rank = math.ceil(len(loader.sampler.dataset) / get_world_size())
        if loader.drop_last:
            return max(1, per_rank // loader.batch_size)
        return math.ceil(per_rank / loader.batch_size)

    def before_run(self, runner: Runner) -> None:
        """Tell the model, before ``load_from``/``--resume`` load into it,
        how to treat a checkpoint state that does not fit, and which file it
        is (for messages)."""
        model = get_ori_model(runner.model)
        model.state_mismatch_policy = ('reinit' if self.reinit_mismatched_state
                                       else 'error')
        model.state_source = _checkpoint_source(runner)

    def _check_single_miner_hook(self, runner: Runner) -> None:
        miners = [h for h in runner.hooks if isinstance(h, RelationMinerHook)]
        if len(miners) > 1:
            described = ', '.join(f'({h.source!r}, init_iter={h.init_iter}, '
                                  f'init_epoch={h.init_epoch})'
                                  for h in miners)
            raise ValueError(
                f'{len(miners)} RelationMinerHooks are registered '
                f'[{described}]; the bank is one, and a second hook would '
                'silently take over its schedule. Keep exactly one '
                "dict(type='RelationMinerHook', ...) in custom_hooks.")

    def before_train(self, runner: Runner) -> None:
        """Resolve the schedule in iterations and check, before any compute,
        that it can work."""
        model = get_ori_model(runner.model)
        if not hasattr(model, 'miner'):
            raise TypeError('RelationMinerHook needs a model with a '
                            f'prototype bank (ReKD), got {type(model)}')
        self._check_single_miner_hook(runner)
        per_epoch = self._iters_per_epoch(runner)
        if self.init_iter is not None:
            self._init_at = self.init_iter
        else:
            self._init_at = (self.init_epoch or 0) * per_epoch
        if self.recluster_interval is not None:
            self._recluster_every = self.recluster_interval * (
                per_epoch if self.by_epoch else 1)

        global_batch = runner.train_dataloader.batch_size * get_world_size()
        model.check_global_batch(global_batch)
        check_state_for_training(
            model,
            global_batch,
            policy='reinit' if self.reinit_mismatched_state else 'error',
            source=getattr(model, 'state_source', None))
        missing = max(0, model.miner.num_prototypes - int(model.queue_count))
        if (not model.miner.is_initialized and runner.iter > 0
                and runner.iter >= self._init_at and self.source == 'queue'
                and missing):
            # Resumed at or past the schedule with an empty bank (the
            # checkpoint's state was re-initialised): cluster once the queue
            # holds K keys again.
            self._init_at = runner.iter + -(-missing // global_batch)
            MMLogger.get_current_instance().warning(
                'RelationMinerHook: the bank is empty at iteration '
                f'{runner.iter}; it is clustered at iteration '
                f'{self._init_at}, once the queue holds '
                f'{model.miner.num_prototypes} keys.')
        self._check_schedule_inside_run(runner, model)
        num_k = model.miner.num_prototypes
        if self.source == 'queue':
            # Keys the queue holds when the bank is clustered: what it holds
            # now (a resumed run) plus one global batch per iteration until
            # then.
            available = min(
                model.queue_len,
                int(model.queue_count) +
                max(0, self._init_at - runner.iter) * global_batch)
            if not model.miner.is_initialized and available < num_k:
                raise ValueError(
                    f'RelationMinerHook: the bank is initialised from the '
                    f'teacher queue at iteration {self._init_at}, when it '
                    f'holds only {available} keys (global batch '
                    f'{global_batch}, queue_len {model.queue_len}), fewer '
                    f'than model.miner.num_prototypes={num_k}. Initialise '
                    'later (init_epoch/init_iter), lower num_prototypes, or '
                    "use source='dataset'.")
        else:
            num_samples = len(self._dataset_loader(runner).dataset)
            if num_samples < num_k:
                raise ValueError(
                    f'RelationMinerHook: the data set for k-means has '
                    f'{num_samples} samples, fewer than '
                    f'model.miner.num_prototypes={num_k}. Lower '
                    'num_prototypes or give the hook a larger '
                    'init_dataloader.')
        if hasattr(model, 'confirm_mining_schedule'):
            no_mining = (
                self._init_at >= runner.max_iters
                and not model.miner.is_initialized)
            model.confirm_mining_schedule(
                'no mining (allow_no_mining=True)' if no_mining else
                f'first clustering at iteration {self._init_at}')

    def _check_schedule_inside_run(self, runner: Runner, model) -> None:
        """The first clustering must happen before training ends."""
        if model.miner.is_initialized or self.allow_no_mining:
            return
        if self._init_at >= runner.max_iters:
            given = (f'init_iter={self.init_iter}' if self.init_iter
                     is not None else f'init_epoch={self.init_epoch}')
            raise ValueError(
                f'RelationMinerHook: the bank is first clustered at '
                f'iteration {self._init_at} ({given}), but training ends '
                f'after {runner.max_iters} iterations (train_cfg): ReKD '
                'would never mine a relation and silently train two MoCo '
                'v2. Lower init_iter/init_epoch, or set '
                'allow_no_mining=True on the hook if that is what you want.')

    def _dataset_loader(self, runner: Runner):
        if self.init_dataloader is None:
            # A separate loader over the training set: iterating the
            # runner's own (persistent-worker, possibly infinite) loader
            # would disturb the epoch in progress.
            train_cfg = runner.cfg.get('train_dataloader')
            if train_cfg is None:
                raise ValueError(
                    "RelationMinerHook: source='dataset' without "
                    'init_dataloader reuses the train_dataloader config, but '
                    'this Runner has none in runner.cfg (it was not built '
                    'with Runner.from_cfg). Pass init_dataloader=dict(...).')
            self.init_dataloader = dict(train_cfg)
            self.init_dataloader.update(
                persistent_workers=False, drop_last=False)
            self.init_dataloader['sampler'] = dict(
                type='DefaultSampler', shuffle=False)
        if isinstance(self.init_dataloader, dict):
            self.init_dataloader = runner.build_dataloader(
                self.init_dataloader, seed=runner.seed)
        return self.init_dataloader

    def before_train_iter(
            self,
            runner: Runner,
            batch_idx: int,
            data_batch: Optional[Union[dict, tuple, list]] = None) -> None:
        """Cluster when the schedule says so (same decision on every rank:
        it only reads the iteration and replicated buffers)."""
        model = get_ori_model(runner.model)
        bank = model.miner
        if not bank.is_initialized:
            due = runner.iter >= self._init_at
        elif self._recluster_every is not None:
            due = runner.iter - int(
                bank.last_cluster_iter) >= self._recluster_every
        else:
            due = False
        if due:
            self.cluster(runner)

    @torch.no_grad()
    def cluster(self, runner: Runner) -> None:
        """Run spherical k-means on teacher embeddings and load the bank."""
        model = get_ori_model(runner.model)
        logger = MMLogger.get_current_instance()
        if self.source == 'queue':
            # The queue is identical on every rank: cluster it locally;
            # refresh_queue_assign() below broadcasts rank 0's bank.
            embeddings = model.filled_mining_keys()
            distributed = False
        else:
            embeddings = self._extract_dataset(runner, model)
            distributed = True
        info = model.miner.initialize(
            embeddings,
            current_iter=runner.iter,
            distributed=distributed,
            **self.kmeans_cfg)
        model.refresh_queue_assign()
        logger.info(
            f'RelationMinerHook: clustered {info["num_samples"]} teacher '
            f'embeddings ({self.source}) into {model.miner.num_prototypes} '
            f'prototypes at iter {runner.iter}: objective '
            f'{info["objective"]:.4f}, {info["num_iters"]} iterations, '
            f'{info["num_reseeded"]} empty clusters re-seeded')

    def _extract_dataset(self, runner: Runner, model) -> torch.Tensor:
        """Teacher embeddings of this rank's shard of the data set."""
        loader = self._dataset_loader(runner)
        was_training = model.training
        model.eval()
        feats = []
        bar = ProgressBar(len(loader)) if is_main_process() else None
        # The pass must not consume the global RNGs that the training
        # augmentations draw from: a run resumed after the initialisation
        # skips the pass, and would otherwise diverge from an uninterrupted
        # run.
        with _preserved_global_rng():
            for data in loader:
                data = model.data_preprocessor(data, False)
                inputs = data['inputs']
                if isinstance(inputs, Sequence):
                    inputs = inputs[0]
                feats.append(model.mining_space(model.teacher_embed(inputs)))
                if bar is not None:
                    bar.update()
        if bar is not None:
            print()
        model.train(was_training)
        return torch.cat(feats)


@contextmanager
def _preserved_global_rng():
    """Restore Python's, numpy's and torch's (CPU) global RNG states on exit.

    The CUDA generators are left alone: the teacher pass draws nothing from
    them (eval mode, no dropout); data loading draws from the CPU ones.
    """
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


def _checkpoint_source(runner: Runner) -> Optional[str]:
    """The file that ``load_or_resume`` will read, for messages."""
    load_from = getattr(runner, '_load_from', None)
    if load_from:
        return str(load_from)
    if getattr(runner, '_resume', False):
        from mmengine.runner import find_latest_checkpoint
        return find_latest_checkpoint(runner.work_dir)
    return None
