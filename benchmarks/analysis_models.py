# Copyright (c) rekd_mm contributors. All rights reserved.
"""Models for analysis arms only, never for users: mmpretrain's ``MoCo``
with another source of its shuffle-BN permutation.

ReKD draws the permutation of its keys from a hash of the momentum
encoder's step count and a salt (:func:`~rekd_mm.models.utils.batch_shuffle.
shuffle_permutation`, exact on resume); mmpretrain's ``MoCo`` draws it with
``torch.randperm`` from the global RNG. With every other part of the
student's step equal (``benchmarks/student_parity.py``), that is what
separates a MoCo v2 arm from a ReKD arm without relations. ``MoCoHashShuffle``
is mmpretrain's ``MoCo`` with ReKD's permutation, so that one arm measures
whether the permutation source moves the student. ``MoCoSeededRandperm`` is
mmpretrain's ``MoCo`` with ``torch.randperm`` draws of its own sequence, so
that MoCo v2 can be run on other random sequences from the same initial
weights, data and augmentations (its own draws come from the global RNG,
which the seed also sets).

Used through ``benchmarks/configs/`` (their ``custom_imports`` name this
module; the repository root must be on ``PYTHONPATH``).
"""
import contextlib
from typing import Callable, Iterator, Optional

import mmpretrain.models.selfsup.moco as moco_module
import torch
from mmengine.dist import get_world_size
from mmpretrain.models import MoCo
from mmpretrain.registry import MODELS

from rekd_mm.models.utils.batch_shuffle import (seeded_shuffle_salt,
                                                shuffle_permutation)

__all__ = ['moco_key_permutation', 'MoCoHashShuffle', 'MoCoSeededRandperm']


@contextlib.contextmanager
def moco_key_permutation(
        current: Callable[[], torch.Tensor]) -> Iterator[None]:
    """Within the block, mmpretrain's ``MoCo.loss`` shuffles its keys with
    ``current()`` (one process).

    ``MoCo.loss`` calls the module-level ``batch_shuffle_ddp`` of
    ``mmpretrain.models.selfsup.moco``; it is replaced by the same permute
    with the given permutation (what it does on one process, minus the
    draw), and restored after the block. mmpretrain has no argument for
    this, hence the swap.
    """
    if get_world_size() != 1:
        raise RuntimeError('moco_key_permutation is for one process only')

    def shuffle(x: torch.Tensor):
        perm = current().to(x.device)
        return x[perm], torch.argsort(perm)

    original = moco_module.batch_shuffle_ddp
    moco_module.batch_shuffle_ddp = shuffle
    try:
        yield
    finally:
        moco_module.batch_shuffle_ddp = original


@MODELS.register_module()
class MoCoHashShuffle(MoCo):
    """mmpretrain's ``MoCo`` whose keys are shuffled by ReKD's permutation
    of the step (one process; analysis only).

    The permutation is read after the momentum update, as ReKD does, so at
    the same step both use ``shuffle_permutation(steps, N)`` with the same
    ``steps``.

    Args:
        sequence (int): Which hash sequence: 0 is salt 0's, the one every
            ReKD run used, whatever its seed, before the salt existed (up to
            session 20); another value shifts the step count by
            ``sequence * 2**32`` and so gives another sequence with the same
            statistics. Defaults to 0.
        salt (str, optional): ``'seed'`` salts the sequence as ReKD now
            does (:func:`seeded_shuffle_salt`, from the run's seed), so that
            the permutations are those of a ReKD run of the same seed.
            Defaults to None (salt 0).
        **kwargs: The arguments of mmpretrain's ``MoCo``.
    """

    def __init__(self,
                 sequence: int = 0,
                 salt: Optional[str] = None,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        if not isinstance(sequence, int) or sequence < 0:
            raise ValueError('model.sequence must be an integer >= 0, got '
                             f'{sequence!r}')
        if salt not in (None, 'seed'):
            raise ValueError("model.salt must be None or 'seed', got "
                             f'{salt!r}')
        self.step_offset = sequence * 2**32
        self.salt = None if salt is None else seeded_shuffle_salt()

    def loss(self, inputs, data_samples, **kwargs):
        batch = inputs[0].shape[0]
        with moco_key_permutation(lambda: shuffle_permutation(
                self.encoder_k.steps + self.step_offset, batch, self.salt)):
            return super().loss(inputs, data_samples, **kwargs)


@MODELS.register_module()
class MoCoSeededRandperm(MoCo):
    """mmpretrain's ``MoCo`` whose keys are shuffled by ``torch.randperm``
    draws of a sequence of its own (one process; analysis only).

    The permutation of step ``s`` (``encoder_k.steps`` after the momentum
    update, as in :class:`MoCoHashShuffle`) is ``torch.randperm(N)`` from a
    CPU generator seeded with ``sequence * 2**20 + s``: the draws of
    mmpretrain's ``MoCo`` (its global RNG's Mersenne Twister), a function of
    the step, so a resumed arm goes on exactly. Everything else of the arm
    (initial weights, data order, augmentations) is MoCo v2's of the seed.

    Args:
        sequence (int): Which sequence of draws, 0 to 4095. Defaults to 0.
        **kwargs: The arguments of mmpretrain's ``MoCo``.
    """

    # torch's CPU generator keeps 32 bits of its seed: sequence and step
    # share them, 12 and 20 bits.
    STEP_BITS = 20

    def __init__(self, sequence: int = 0, **kwargs) -> None:
        super().__init__(**kwargs)
        if not isinstance(sequence,
                          int) or not 0 <= sequence < 2**(32 - self.STEP_BITS):
            raise ValueError('model.sequence must be an integer in [0, '
                             f'{2**(32 - self.STEP_BITS)}), got {sequence!r}')
        self.sequence = sequence

    def permutation(self, batch: int) -> torch.Tensor:
        """This step's permutation of a batch of ``batch`` keys."""
        # A host read per step: fine on one CPU process (analysis only).
        step = int(self.encoder_k.steps)
        if step >= 2**self.STEP_BITS:
            raise RuntimeError(f'MoCoSeededRandperm supports fewer than '
                               f'{2**self.STEP_BITS} steps, at {step}')
        seed = self.sequence * 2**self.STEP_BITS + step
        return torch.randperm(
            batch, generator=torch.Generator().manual_seed(seed))

    def loss(self, inputs, data_samples, **kwargs):
        batch = inputs[0].shape[0]
        with moco_key_permutation(lambda: self.permutation(batch)):
            return super().loss(inputs, data_samples, **kwargs)
