# Copyright (c) rekd_mm contributors. All rights reserved.
from operator import attrgetter
from typing import Dict, Optional, Sequence

import torch
from mmengine.hooks import Hook
from mmengine.logging import MMLogger
from mmengine.runner import BaseLoop, Runner
from mmpretrain.registry import HOOKS
from mmpretrain.utils import get_ori_model

from rekd_mm.utils.checkpoint import (PretrainedMismatchError,
                                      describe_mismatch, load_state_dict_file,
                                      match_prefixed_state)

__all__ = ['StrictPretrainedCheckHook']


def _pretrained_cfg(init_cfg) -> Optional[dict]:
    cfgs = init_cfg if isinstance(init_cfg, (list, tuple)) else [init_cfg]
    for cfg in cfgs:
        if isinstance(cfg, dict) and cfg.get('type') == 'Pretrained':
            return cfg
    return None


def _is_training(runner: Runner) -> bool:
    """Whether ``before_run`` was called by ``Runner.train``.

    mmengine 0.10.7 has no public flag for it: ``train()`` builds its loop
    before ``before_run``, while ``test()`` and ``val()`` leave the training
    loop a config (or None).
    """
    return isinstance(getattr(runner, '_train_loop', None), BaseLoop)


@HOOKS.register_module()
class StrictPretrainedCheckHook(Hook):
    """Fail before training when a ``Pretrained`` init does not load.

    mmengine's ``PretrainedInit`` loads non-strictly: a checkpoint whose keys
    do not fit (wrong ``prefix``, another architecture) only logs a warning
    and the linear probe then trains on a random backbone (mmselfsup#330).
    This hook makes that an error, in two steps:

    - ``before_run`` (before the weights are initialised): the module's
      ``init_cfg`` must name a checkpoint, and the checkpoint's
      ``prefix``-ed keys must cover the module's state dict with the right
      shapes; otherwise a :class:`PretrainedMismatchError` lists a few
      expected and found keys.
    - ``before_train`` (after initialisation, fresh runs only): the module's
      weights must equal the checkpoint's, which proves the load happened.

    Both steps guard training only: ``Runner.test``/``val`` (mmpretrain's
    ``tools/test.py``) load the whole model from ``load_from`` and never
    apply ``init_cfg``, so a probe config with an empty checkpoint tests
    fine.

    Args:
        modules (Sequence[str]): Dotted names of the checked sub-modules of
            the model. Defaults to ``('backbone', )``.
        allow_missing (bool): Whether some (not all) keys may be missing or
            mis-shaped, with a warning. Defaults to False.
        check_values (bool): Whether to compare the loaded weights with the
            checkpoint at ``before_train``. Skipped when resuming or with
            ``load_from``, which legitimately replace the weights.
            Defaults to True.
    """

    priority = 'VERY_HIGH'

    def __init__(self,
                 modules: Sequence[str] = ('backbone', ),
                 allow_missing: bool = False,
                 check_values: bool = True) -> None:
        if isinstance(modules, str):
            modules = (modules, )
        self.modules = tuple(modules)
        self.allow_missing = allow_missing
        self.check_values = check_values
        self._expected: Dict[str, dict] = {}

    def before_run(self, runner: Runner) -> None:
        """Check every module's ``Pretrained`` checkpoint against its keys
        (training only)."""
        self._expected = {}
        if not _is_training(runner):
            return
        model = get_ori_model(runner.model)
        logger = MMLogger.get_current_instance()
        for name in self.modules:
            try:
                module = attrgetter(name)(model)
            except AttributeError:
                raise AttributeError(
                    f'StrictPretrainedCheckHook: the model has no module '
                    f'{name!r}') from None
            init = _pretrained_cfg(getattr(module, 'init_cfg', None))
            if init is None:
                raise ValueError(
                    f'StrictPretrainedCheckHook: model.{name}.init_cfg has no '
                    "Pretrained entry; add init_cfg=dict(type='Pretrained', "
                    f"checkpoint=..., prefix='backbone.') to model.{name}")
            checkpoint = init.get('checkpoint')
            if not checkpoint:
                raise ValueError(
                    f'StrictPretrainedCheckHook: model.{name}.init_cfg names '
                    'no checkpoint; pass the pretrained weights with '
                    f'--cfg-options model.{name}.init_cfg.checkpoint=PATH')
            prefix = init.get('prefix') or ''
            # mmengine's PretrainedInit appends '.' to a given prefix.
            if prefix and not prefix.endswith('.'):
                prefix += '.'
            match = match_prefixed_state(module,
                                         load_state_dict_file(checkpoint),
                                         prefix)
            incomplete = bool(match.missing or match.mismatched)
            message = describe_mismatch(module, match, prefix, checkpoint,
                                        f'model.{name}')
            if not match.state or (incomplete and not self.allow_missing):
                raise PretrainedMismatchError('StrictPretrainedCheckHook: ' +
                                              message)
            if incomplete:
                logger.warning(message)
            logger.info(f'StrictPretrainedCheckHook: model.{name} will load '
                        f'{len(match.state)} tensors from {checkpoint} '
                        f'(prefix {prefix!r})')
            self._expected[name] = match.state

    def before_train(self, runner: Runner) -> None:
        """Check that the initialised weights are the checkpoint's."""
        expected, self._expected = self._expected, {}
        # Resuming or load_from legitimately replace the initial weights.
        fresh = runner.iter == 0 and not getattr(
            runner, '_resume', False) and not getattr(runner, '_load_from',
                                                      None)
        if not (self.check_values and fresh):
            return
        model = get_ori_model(runner.model)
        for name, state in expected.items():
            own = attrgetter(name)(model).state_dict()
            differ = [
                key for key, value in state.items()
                if not torch.equal(own[key].cpu(), value.to(own[key].dtype))
            ]
            if differ:
                raise RuntimeError(
                    f'StrictPretrainedCheckHook: after initialisation '
                    f'{len(differ)} tensors of model.{name} differ from the '
                    f'checkpoint, e.g. {differ[:4]}: the Pretrained init_cfg '
                    'was not applied (was init_cfg replaced or init_weights '
                    'overridden?)')
