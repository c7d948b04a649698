# Copyright (c) rekd_mm contributors. All rights reserved.
from operator import attrgetter
from typing import Dict, Optional, Union

from mmengine.hooks import Hook
from mmengine.logging import MMLogger
from mmengine.runner import Runner
from mmpretrain.registry import HOOKS
from mmpretrain.utils import get_ori_model

from rekd_mm.evaluation.knn import (build_knn_dataloader, extract_features,
                                    weighted_knn)

__all__ = ['KNNMonitorHook']

DATA_BATCH = Optional[Union[dict, tuple, list]]


@HOOKS.register_module()
class KNNMonitorHook(Hook):
    """Monitor the weighted-kNN accuracy of the student (and teacher)
    during pretraining.

    Every ``interval`` epochs (``by_epoch=True``) or iterations, the frozen
    features of the student backbone (and of the teacher's, when the model
    has one) are scored with InstDisc's weighted kNN on labelled
    dataloaders, and logged as ``knn/student_top1`` and
    ``knn/teacher_top1`` (plus ``_top5`` with at least 5 classes) to the
    message hub, the visualizer backends and the log. Every rank extracts
    its shard; features are gathered, so every rank computes the same score.

    Args:
        interval (int): Evaluation period. Defaults to 1.
        by_epoch (bool): Whether ``interval`` counts epochs or iterations.
            Defaults to True.
        train_dataloader (dict, optional): The memory bank's loader.
            Defaults to None (``cfg.knn_train_dataloader``).
        val_dataloader (dict, optional): The queries' loader. Defaults to
            None (``cfg.knn_val_dataloader``).
        k (int): Neighbours. Defaults to 20.
        temperature (float): τ of the vote weights. Defaults to 0.07.
        max_train_samples (int, optional): Random subset of the memory bank
            (fixed for the whole run). Defaults to None (all).
        max_val_samples (int, optional): Random subset of the queries.
            Defaults to None (all).
        seed (int): Seed of the subsets. Defaults to 0.
        teacher (bool): Whether to score the teacher too, when the model
            has ``teacher_module``. Defaults to True.
        teacher_module (str): Dotted name of the teacher backbone.
            Defaults to ``'teacher.backbone'``.
        initial (bool): Whether to score the networks before the first
            iteration too (logged at step 0), so that a learning curve
            starts from the initialisation. Skipped when resuming. Defaults
            to False.
    """

    priority = 'LOW'

    def __init__(self,
                 interval: int = 1,
                 by_epoch: bool = True,
                 train_dataloader: Optional[dict] = None,
                 val_dataloader: Optional[dict] = None,
                 k: int = 20,
                 temperature: float = 0.07,
                 max_train_samples: Optional[int] = None,
                 max_val_samples: Optional[int] = None,
                 seed: int = 0,
                 teacher: bool = True,
                 teacher_module: str = 'teacher.backbone',
                 initial: bool = False) -> None:
        if interval < 1:
            raise ValueError(f'KNNMonitorHook: interval must be >= 1, got '
                             f'{interval}')
        if k < 1 or temperature <= 0:
            raise ValueError('KNNMonitorHook: need k >= 1 and temperature > '
                             f'0, got k={k}, temperature={temperature}')
        self.interval = interval
        self.by_epoch = by_epoch
        self.loader_cfgs = dict(train=train_dataloader, val=val_dataloader)
        self.k = k
        self.temperature = temperature
        self.max_samples = dict(train=max_train_samples, val=max_val_samples)
        self.seed = seed
        self.teacher = teacher
        self.teacher_module = teacher_module
        self.initial = initial
        self._loaders: Dict[str, object] = {}

    def before_train(self, runner: Runner) -> None:
        """Resolve the dataloader configs (a missing one fails now, not
        after the first interval); score the initialisation if asked."""
        for split in ('train', 'val'):
            if self.loader_cfgs[split] is None:
                cfg = runner.cfg.get(f'knn_{split}_dataloader', None)
                if cfg is None:
                    raise KeyError(
                        f'KNNMonitorHook: give {split}_dataloader or define '
                        f'knn_{split}_dataloader in the config (labelled, '
                        'un-augmented samples)')
                self.loader_cfgs[split] = cfg
        if self.initial and runner.iter == 0:
            self.evaluate(runner, step=0)

    def _loader(self, split: str):
        if split not in self._loaders:
            self._loaders[split] = build_knn_dataloader(
                self.loader_cfgs[split], self.max_samples[split], self.seed)
        return self._loaders[split]

    def after_train_iter(self,
                         runner: Runner,
                         batch_idx: int,
                         data_batch: DATA_BATCH = None,
                         outputs: Optional[dict] = None) -> None:
        if not self.by_epoch and self.every_n_train_iters(
                runner, self.interval):
            self.evaluate(runner, step=runner.iter + 1)

    def after_train_epoch(self, runner: Runner) -> None:
        if self.by_epoch and self.every_n_epochs(runner, self.interval):
            self.evaluate(runner, step=runner.iter)

    def _backbones(self, model) -> Dict[str, object]:
        backbones = dict(student=model.backbone)
        if self.teacher:
            try:
                backbones['teacher'] = attrgetter(self.teacher_module)(model)
            except AttributeError:
                pass  # a single-network model: student only
        return backbones

    def evaluate(self, runner: Runner, step: int) -> Dict[str, float]:
        """Score every backbone and log the results.

        Args:
            runner (Runner): The runner.
            step (int): The step written to the visualizer.

        Returns:
            Dict[str, float]: The logged ``knn/*`` scalars.
        """
        model = get_ori_model(runner.model)
        was_training = model.training
        model.eval()
        scalars = {}
        try:
            for who, backbone in self._backbones(model).items():
                train = extract_features(backbone, self._loader('train'),
                                         model.data_preprocessor)
                val = extract_features(backbone, self._loader('val'),
                                       model.data_preprocessor)
                classes = getattr(
                    self._loader('train').dataset, 'CLASSES', None)
                scores = weighted_knn(
                    *train,
                    *val,
                    k=self.k,
                    T=self.temperature,
                    num_classes=len(classes) if classes else None)
                for name, value in scores.items():
                    scalars[f'knn/{who}_{name}'] = value
        finally:
            # ReKD.train keeps a frozen teacher in eval mode.
            model.train(was_training)
        for key, value in scalars.items():
            runner.message_hub.update_scalar(key, value)
        runner.visualizer.add_scalars(scalars, step=step)
        MMLogger.get_current_instance().info(
            f'KNNMonitorHook (k={self.k}, T={self.temperature}) at iter '
            f'{step}: ' + ', '.join(f'{key}: {value:.2f}'
                                    for key, value in scalars.items()))
        return scalars
