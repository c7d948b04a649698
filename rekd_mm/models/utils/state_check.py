# Copyright (c) rekd_mm contributors. All rights reserved.
"""Checks of ReKD's checkpointed state against the built model.

A checkpoint's ReKD state (the prototype bank ``miner.*`` K x D_t, the
index-aligned queues, the student's D x L and the teacher's D_t x L, with
their pointer, fill count, labels and cached assignments, the mining-space
queue D_t x L of ``miner.center='batch'``; D is ``model.feat_dim``, D_t
``model.teacher_feat_dim``, equal to D when unset) only means
something for the config it was trained with. mmengine's non-strict load
merely prints "size mismatch" and keeps the model's fresh buffers next to a
restored ``initialized`` flag or ``queue_count``: a bank of zeros flagged as
clustered, or random queue slots counted as real keys, and ReKD silently
trains as two MoCo v2. So, when a state dict is loaded into ReKD
(:func:`check_loaded_state`, from ``ReKD._load_from_state_dict``) and again
before iteration 1 (:func:`check_state_for_training`, from
``RelationMinerHook.before_train``):

- a mismatch stops with the config key and both values, unless the policy
  is ``'reinit'`` (``RelationMinerHook(reinit_mismatched_state=True)``),
  which starts the bank and the queues afresh, consistently (pointer and
  count 0, no cached assignment, bank not initialised: it is clustered again
  at the hook's schedule);
- a file whose queue state is incomplete (a MoCo v2 checkpoint has ``queue``
  and ``queue_ptr`` but neither ``queue_count`` nor ``teacher_queue``) never
  restores part of it: the queues start afresh, with a warning;
- a bank is never flagged initialised while a prototype is zero or not
  finite.
"""
from typing import List, Optional, Tuple

import torch
from mmengine.logging import MMLogger

__all__ = [
    'QUEUE_KEYS', 'BANK_KEYS', 'ReKDStateError', 'check_loaded_state',
    'check_state_for_training', 'reset_bank', 'reset_queues', 'bad_prototypes'
]

# Buffers of the queue group (index-aligned, all or nothing) and of the bank.
QUEUE_KEYS = ('queue', 'teacher_queue', 'queue_ptr', 'queue_count',
              'queue_labels', 'queue_assign', 'queue_assign_age',
              'mining_queue')
# A file that has any of these but not all of them holds no usable ReKD
# queue state (e.g. MoCo v2: 'queue' and 'queue_ptr' only).
_CORE_QUEUE_KEYS = ('queue', 'teacher_queue', 'queue_ptr', 'queue_count')
BANK_KEYS = ('miner.prototypes', 'miner.initialized',
             'miner.last_cluster_iter', 'mining_steps')

_POLICIES = ('error', 'reinit')


class ReKDStateError(ValueError):
    """A checkpoint's ReKD state does not fit the built model."""


def bad_prototypes(prototypes: torch.Tensor) -> int:
    """Number of prototypes that are zero or hold a NaN / inf."""
    finite = torch.isfinite(prototypes).all(1)
    nonzero = prototypes.abs().sum(1) > 0
    return int((~(finite & nonzero)).sum())


@torch.no_grad()
def reset_bank(model) -> None:
    """An empty, uninitialised bank; no queue slot assigned to it."""
    bank = model.miner
    bank.prototypes.zero_()
    bank.initialized.fill_(False)
    bank.last_cluster_iter.fill_(-1)
    if hasattr(model, 'mining_steps'):  # the relation warm-up restarts
        model.mining_steps.zero_()
    model.queue_assign.fill_(-1)
    model.queue_assign_age.zero_()


@torch.no_grad()
def reset_queues(model) -> None:
    """Empty queues: pointer and fill count 0, no label, no assignment.

    The slots' contents stay (random at build time): they only serve as
    negatives until overwritten, and k-means only reads written slots.
    """
    model.queue_ptr.zero_()
    model.queue_count.zero_()
    model.queue_labels.fill_(-1)
    model.queue_assign.fill_(-1)
    model.queue_assign_age.zero_()
    if hasattr(model, 'mining_queue'):
        model.mining_queue.zero_()


def _dims(model) -> dict:
    return dict(
        K=model.miner.num_prototypes,
        D=model.feat_dim,
        Dt=getattr(model, 'teacher_feat_dim', model.feat_dim),
        L=model.queue_len,
        center=getattr(model, 'mining_center', None))


def _teacher_dim_key(model) -> str:
    """The config key that sets the teacher's dimension D_t."""
    if not getattr(model, 'teacher_dim_shared', True):
        return 'model.teacher_feat_dim'
    return 'model.teacher_feat_dim (unset, so model.feat_dim)'


def _fmt(source: Optional[str]) -> str:
    return repr(source) if source else 'the checkpoint'


def _bank_problems(state: dict, prefix: str, model, source: str) -> List[str]:
    """Mismatches of the file's bank against the model."""
    problems = []
    protos = state.get(prefix + 'miner.prototypes')
    if protos is None:
        return problems
    dims = _dims(model)
    if protos.dim() != 2:
        return [
            f'miner.prototypes: {source} has shape '
            f'{tuple(protos.shape)}, the model ({dims["K"]}, '
            f'{dims["Dt"]})'
        ]
    if protos.shape[0] != dims['K']:
        problems.append(
            f'model.miner.num_prototypes: {source} has {protos.shape[0]}, '
            f'the config {dims["K"]}')
    if protos.shape[1] != dims['Dt']:
        # The bank lives in the teacher's space.
        problems.append(
            f'{_teacher_dim_key(model)}: {source} has {protos.shape[1]} '
            f'(the prototypes\' width), the config {dims["Dt"]}')
    flag = state.get(prefix + 'miner.initialized')
    if not problems and flag is not None and bool(flag):
        bad = bad_prototypes(protos.float())
        if bad:
            problems.append(
                f'miner.prototypes: {source} flags the bank initialised but '
                f'{bad} of its {protos.shape[0]} prototypes are zero or not '
                'finite (a NaN reached k-means, or the bank was never '
                'clustered)')
    return problems


def _queue_problems(state: dict, prefix: str, model, source: str) -> List[str]:
    """Mismatches of the file's (complete) queue state against the model."""
    dims = _dims(model)
    problems = []
    queue = state[prefix + 'queue']
    teacher_queue = state[prefix + 'teacher_queue']
    if queue.dim() == 2 and teacher_queue.dim() == 2:
        if queue.shape[0] != dims['D']:
            problems.append(f'model.feat_dim: {source} has '
                            f'{queue.shape[0]} (the student queue\'s keys), '
                            f'the config {dims["D"]}')
        if teacher_queue.shape[0] != dims['Dt']:
            problems.append(f'{_teacher_dim_key(model)}: {source} has '
                            f'{teacher_queue.shape[0]} (the teacher queue\'s '
                            f'keys), the config {dims["Dt"]}')
        if queue.shape[1] != dims['L']:
            problems.append(f'model.queue_len: {source} has '
                            f'{queue.shape[1]}, the config {dims["L"]}')
        elif teacher_queue.shape[1] != queue.shape[1]:
            problems.append(
                f'teacher_queue: {source} has {teacher_queue.shape[1]} '
                f'slots but its student queue {queue.shape[1]}: the queues '
                'are not index-aligned (a damaged checkpoint)')
    else:
        problems.append(f'queue / teacher_queue: {source} has shapes '
                        f'{tuple(queue.shape)} / '
                        f'{tuple(teacher_queue.shape)}')
    file_center = 'batch' if prefix + 'mining_queue' in state else None
    if file_center != dims['center']:
        problems.append(
            f'model.miner.center: {source} was trained with '
            f'{file_center!r}, the config has {dims["center"]!r} (the bank '
            'and mining queue live in that space)')
    if not problems:
        length = queue.shape[1]
        ptr = int(state[prefix + 'queue_ptr'].reshape(-1)[0])
        count = int(state[prefix + 'queue_count'])
        if not 0 <= ptr < length or not 0 <= count <= length:
            problems.append(
                f'queue_ptr / queue_count: {source} has {ptr} / {count}, '
                f'outside the queue of length {length}')
    return problems


def _raise(problems: List[str], source: str, what: str) -> None:
    raise ReKDStateError(
        f'ReKD: the {what} of {source} does not fit the built model:\n  ' +
        '\n  '.join(problems) +
        '\nResume with the config the checkpoint was trained with (undo the '
        '--cfg-options above), or start the prototype bank and both queues '
        'afresh with --cfg-options custom_hooks.<i>.reinit_mismatched_state='
        'True (<i>: the index of RelationMinerHook in custom_hooks); the bank '
        "is then clustered again at the hook's schedule.")


def check_loaded_state(model,
                       state: dict,
                       prefix: str = '',
                       policy: str = 'error',
                       source: Optional[str] = None) -> Tuple[bool, bool]:
    """Check (and possibly drop) the ReKD state of a state dict being
    loaded into ``model``.

    Keys of a group that must not be restored are removed from ``state``
    (the caller loads the rest) and the model's own group is reset.

    Args:
        model (ReKD): The model being loaded.
        state (dict): The state dict (modified in place).
        prefix (str): The model's prefix in ``state``. Defaults to ''.
        policy (str): ``'error'`` or ``'reinit'``. Defaults to ``'error'``.
        source (str, optional): The checkpoint, for messages.

    Returns:
        Tuple[bool, bool]: Whether the bank and the queues were reset.
    """
    if policy not in _POLICIES:
        raise ValueError(f'policy must be one of {_POLICIES}, got {policy!r}')
    source = _fmt(source)
    logger = MMLogger.get_current_instance()
    present = [k for k in _CORE_QUEUE_KEYS if prefix + k in state]
    reset_q = reset_b = False
    queue_problems = []
    if present and len(present) < len(_CORE_QUEUE_KEYS):
        missing = [k for k in _CORE_QUEUE_KEYS if k not in present]
        logger.warning(
            f'ReKD: {source} has {present} but not {missing} (e.g. a MoCo v2 '
            'checkpoint): its queue is not index-aligned with a teacher '
            'queue, so both queues start empty (pointer 0, count 0) instead '
            'of mixing its pointer with slots that were never written.')
        reset_q = True
    elif present:
        queue_problems = _queue_problems(state, prefix, model, source)
    bank_problems = _bank_problems(state, prefix, model, source)
    problems = queue_problems + bank_problems
    if problems and policy == 'error':
        _raise(problems, source, 'ReKD state')
    if problems:
        logger.warning('ReKD: reinit_mismatched_state=True: the prototype '
                       'bank and both queues start afresh because:\n  ' +
                       '\n  '.join(problems))
        reset_q = reset_b = True
    if reset_b:
        for key in BANK_KEYS:
            state.pop(prefix + key, None)
        reset_bank(model)
    if reset_q:
        for key in QUEUE_KEYS:
            state.pop(prefix + key, None)
        reset_queues(model)
    return reset_b, reset_q


def check_state_for_training(model,
                             global_batch: int,
                             policy: str = 'error',
                             source: Optional[str] = None) -> bool:
    """Check the model's (restored) ReKD state before iteration 1.

    Args:
        model (ReKD): The model, after ``load_from`` / ``--resume``.
        global_batch (int): Batch per process x world size.
        policy (str): ``'error'`` or ``'reinit'``. Defaults to ``'error'``.
        source (str, optional): The checkpoint, for messages.

    Returns:
        bool: Whether the state was reset.
    """
    source = _fmt(source)
    problems = []
    ptr = int(model.queue_ptr)
    if ptr % global_batch:
        problems.append(
            f'train_dataloader.batch_size: the queue pointer of {source} is '
            f'{ptr}, not a multiple of the global batch {global_batch} '
            '(batch per process x world size): the checkpoint was trained '
            'with another global batch')
    if model.miner.is_initialized:
        bad = bad_prototypes(model.miner.prototypes.float())
        if bad:
            problems.append(
                f'miner.prototypes: the bank is flagged initialised but '
                f'{bad} of its {model.miner.num_prototypes} prototypes are '
                'zero or not finite')
    if problems and policy == 'error':
        _raise(problems, source, 'ReKD state')
    if problems:
        MMLogger.get_current_instance().warning(
            'ReKD: reinit_mismatched_state=True: the prototype bank and both '
            'queues start afresh because:\n  ' + '\n  '.join(problems))
        reset_bank(model)
        reset_queues(model)
        return True
    return False
