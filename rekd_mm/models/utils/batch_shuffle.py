# Copyright (c) rekd_mm contributors. All rights reserved.
"""Shuffle-BN for several key encoders: one gather of the images, one gather
of the keys, and a permutation drawn on the device.

MoCo's recipe (mmpretrain's ``batch_shuffle_ddp``) gathers the images of
every rank, draws a permutation with the global RNG on rank 0, broadcasts
it, and gathers the keys again to undo it, once per key encoder. Here one
permutation serves every key encoder of the step: the images are gathered
once (:func:`gather_shuffled`), each encoder runs on this rank's part of the
shuffled global batch, and all their keys come back in one gather
(:func:`gather_unshuffled`), which is also the gather the queues need.

The permutation (:func:`shuffle_permutation`) is a function of a step
counter held in a tensor: no host read, no broadcast (every rank computes
the same one from its replicated counter), no draw from the global RNG, and
a run resumed from a checkpoint that holds the counter shuffles exactly as
the uninterrupted run. A salt (:func:`seeded_shuffle_salt`, from the run's
seed) gives each seed its own sequence of permutations, as MoCo's draws
from the seeded RNG do; without one, every run would shuffle alike.
"""
from typing import List, Optional, Sequence, Tuple

import torch
from mmengine.dist import all_gather, get_rank, get_world_size

__all__ = [
    'seeded_shuffle_salt', 'shuffle_permutation', 'gather_shuffled',
    'gather_unshuffled'
]

# splitmix64 constants, as signed int64 (torch has no uint64 arithmetic).
_GOLDEN = 0x9E3779B97F4A7C15 - (1 << 64)
_MIX1 = 0xBF58476D1CE4E5B9 - (1 << 64)
_MIX2 = 0x94D049BB133111EB - (1 << 64)


def _shift_right(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical right shift of int64 (``>>`` is arithmetic on signed ints)."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def splitmix64(x: torch.Tensor) -> torch.Tensor:
    """The splitmix64 hash of int64 values (wrapping arithmetic), on the
    tensor's device."""
    x = x + _GOLDEN
    x = (x ^ _shift_right(x, 30)) * _MIX1
    x = (x ^ _shift_right(x, 27)) * _MIX2
    return x ^ _shift_right(x, 31)


def seeded_shuffle_salt() -> torch.Tensor:
    """A 0-d int64 salt for :func:`shuffle_permutation`, the splitmix64 hash
    of the seed of torch's default generator.

    mmengine's ``randomness.seed`` (or the seed it draws and shares across
    ranks when none is set) is that seed. It is read, not drawn from, so
    everything built after the salt initialises exactly as without it.
    """
    seed = torch.initial_seed() % 2**64
    if seed >= 2**63:  # as a signed int64
        seed -= 2**64
    return splitmix64(torch.tensor(seed, dtype=torch.long))


def shuffle_permutation(step: torch.Tensor,
                        num: int,
                        salt: Optional[torch.Tensor] = None) -> torch.Tensor:
    """A pseudo-random permutation of ``range(num)`` determined by ``step``
    and ``salt``.

    Args:
        step (Tensor): A 0-d or one-element integer tensor (e.g. the momentum
            encoder's checkpointed ``steps``), identical on every rank.
        num (int): The global batch size.
        salt (Tensor, optional): A 0-d int64 tensor that selects the
            sequence of permutations (e.g. :func:`seeded_shuffle_salt`),
            identical on every rank. The counters ``step * num + i`` are
            XOR-ed with it before hashing; None is salt 0, the sequence of
            rekd_mm before the salt existed. Defaults to None.

    Returns:
        Tensor: ``(num,)`` long permutation on ``step``'s device.
    """
    counters = step.reshape(()).long() * num + torch.arange(
        num, device=step.device)
    if salt is not None:
        counters = counters ^ salt.to(step.device).reshape(())
    return torch.argsort(splitmix64(counters), stable=True)


def gather_shuffled(x: torch.Tensor,
                    perm: Optional[torch.Tensor]) -> torch.Tensor:
    """This rank's part of the shuffled global batch (one all-gather).

    Args:
        x (Tensor): ``(B, ...)`` this rank's batch.
        perm (Tensor, optional): Permutation of the global batch; None means
            no shuffle (one process).

    Returns:
        Tensor: ``(B, ...)`` rows ``perm[rank * B:(rank + 1) * B]`` of the
        global batch.
    """
    if perm is None:
        return x
    world_size = get_world_size()
    return torch.cat(all_gather(x))[perm.view(world_size, -1)[get_rank()]]


def gather_unshuffled(
    keys: Sequence[torch.Tensor], perm: Optional[torch.Tensor]
) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
    """Gather keys computed on the shuffled batch and restore their order.

    All tensors travel in one all-gather (as float32).

    Args:
        keys (Sequence[Tensor]): ``(B, D_i)`` keys of this rank's shuffled
            batch, one tensor per encoder.
        perm (Tensor, optional): The permutation given to
            :func:`gather_shuffled` (None: one process, no shuffle).

    Returns:
        Tuple[List[Tensor], List[Tensor]]: For each input, the keys of this
        rank's own samples ``(B, D_i)`` and of the whole global batch
        ``(W * B, D_i)``, in the order of the ranks' batches.
    """
    packed = torch.cat([k.float() for k in keys], dim=1)
    batch = packed.shape[0]
    if perm is None:
        everything = torch.cat(all_gather(packed))
    else:
        shuffled = torch.cat(all_gather(packed))
        # Row j of the gathered keys belongs to global sample perm[j].
        everything = torch.empty_like(shuffled).index_copy_(0, perm, shuffled)
    mine = everything[get_rank() * batch:(get_rank() + 1) * batch]
    widths = [k.shape[1] for k in keys]
    return list(mine.split(widths,
                           dim=1)), list(everything.split(widths, dim=1))
