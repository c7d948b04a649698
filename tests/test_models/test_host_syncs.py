# Copyright (c) rekd_mm contributors. All rights reserved.
"""Host synchronisations of a ReKD training step, counted on CPU.

A CUDA host that waits for the device in the middle of a step (a tensor read
in Python, a data-dependent output size) idles the GPU while it queues the
rest of the step. ``HostSyncCounter`` counts, on CPU, the operations that
would do so on CUDA; the target is at most two per ReKD step once the
prototype bank exists (the step has one, at its start).
"""
import pytest
import torch
from mmengine.model import ExponentialMovingAverage
from mmengine.registry import init_default_scope
from mmpretrain.registry import MODELS
from mmpretrain.structures import DataSample

import rekd_mm  # noqa: F401
from rekd_mm.models.utils.ema import SyncFreeEMA
from rekd_mm.models.utils.prototype_bank import PrototypeBank, count_used
from rekd_mm.utils.host_syncs import HostSyncCounter
from tests.toy_configs import toy_model_cfg

MAX_SYNCS_PER_STEP = 2


def _batch(seed, num=8, size=16):
    gen = torch.Generator().manual_seed(seed)
    views = [torch.randn(num, 3, size, size, generator=gen) for _ in range(2)]
    labels = torch.randint(3, (num, ), generator=gen)
    return views, [DataSample().set_gt_label(int(y)) for y in labels]


def _model_with_bank(**miner):
    """The toy ReKD once its bank exists: queue full of real keys, bank
    clustered from it, assignments cached (what RelationMinerHook does)."""
    init_default_scope('mmpretrain')
    torch.manual_seed(0)
    cfg = toy_model_cfg()
    cfg['miner'].update(miner)
    model = MODELS.build(cfg)
    model.train()
    for seed in range(model.queue_len // 8):
        model.loss(*_batch(seed))
    model.miner.initialize(
        model.filled_mining_keys(), distributed=False, num_iters=3)
    model.refresh_queue_assign()
    return model


@pytest.mark.parametrize('miner', [
    dict(),
    dict(center='batch', max_positives=5),
])
def test__rekd_step_has_at_most_two_host_syncs_once_the_bank_exists(miner):
    model = _model_with_bank(**miner)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    # queue_refresh_interval=2 in the toy config: steps with and without a
    # full refresh of the cached assignments are both counted.
    assert model.queue_refresh_interval == 2
    for step in range(3):
        inputs, samples = _batch(100 + step)
        with HostSyncCounter() as counter:
            losses = model.loss(inputs, samples)
        assert counter.count <= MAX_SYNCS_PER_STEP, counter.ops
        # The mining path ran (mined positives, statistics, bank update).
        assert losses['relation_pos_per_anchor'] > 0
        loss, _ = model.parse_losses(losses)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def test__counter_sees_the_usual_host_syncs():
    x = torch.arange(6.)
    with HostSyncCounter() as counter:
        float(x.sum())
        x[x > 2]
        torch.bincount(x.long())
        x.nonzero()
        x.add(1)  # not a sync
    assert len(counter.ops) == 4, counter.ops


def test__sync_free_ema_equals_mmengines_ema():
    torch.manual_seed(0)
    online = torch.nn.Sequential(
        torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    for interval in (1, 3):
        ref = ExponentialMovingAverage(online, 0.1, interval=interval)
        ours = SyncFreeEMA(online, 0.1, interval=interval)
        for _ in range(7):
            with torch.no_grad():
                for p in online.parameters():
                    p.add_(torch.randn_like(p))
                online[1].running_mean.add_(1)
            ref.update_parameters(online)
            with HostSyncCounter() as counter:
                ours.update_parameters(online)
            assert counter.count == 0, counter.ops
            for a, b in zip(ref.state_dict().values(),
                            ours.state_dict().values()):
                torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test__bank_update_and_used_count_do_not_sync():
    torch.manual_seed(0)
    bank = PrototypeBank(num_prototypes=5, feat_dim=8, threshold=0.2)
    bank.prototypes.copy_(torch.nn.functional.normalize(torch.randn(5, 8)))
    keys = torch.nn.functional.normalize(torch.randn(32, 8))
    assign, sim = bank.assign(keys)
    assert (assign == -1).any() and (assign >= 0).any()
    with HostSyncCounter() as counter:
        bank.update(keys, assign, sim)
        used = count_used(assign, 5)
    assert counter.count == 0, counter.ops
    assert used == len(set(assign[assign >= 0].tolist()))


def test__loss_guard_reads_the_host_once_per_iteration():
    from types import SimpleNamespace

    from rekd_mm.engine.hooks import LossGuardHook
    outputs = dict(
        loss=torch.tensor(3.0),
        loss_teacher=torch.tensor(1.0),
        loss_relation=torch.tensor(2.0),
        relation_precision=torch.tensor(float('nan')))  # not a loss term
    with HostSyncCounter() as counter:
        LossGuardHook().after_train_iter(
            SimpleNamespace(iter=0), 0, outputs=outputs)
    assert counter.count == 1, counter.ops
    outputs['loss_relation'] = torch.tensor(float('inf'))
    with pytest.raises(FloatingPointError, match='loss_relation is inf'):
        LossGuardHook().after_train_iter(
            SimpleNamespace(
                iter=4,
                message_hub=SimpleNamespace(get_info=lambda key: None)),
            0,
            outputs=outputs)
