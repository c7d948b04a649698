# Copyright (c) rekd_mm contributors. All rights reserved.
"""ReKD under DDP (two gloo processes on CPU): every rank must end with the
same bank, queues and weights, and the gathered bank update must equal the
single-process one."""
import pytest
import torch

from tests.dist_utils import run_distributed
from tests.toy_configs import toy_model_cfg

MAX_ITERS = 5
INIT_ITER = 3
BATCH_PER_RANK = 4


def _train_with_runner(rank, world_size, work_dir, center=None):
    from mmengine.config import Config
    from mmengine.runner import Runner
    from mmpretrain.utils import get_ori_model

    import rekd_mm  # noqa: F401
    from tests.toy_configs import toy_runner_cfg

    # The process group already exists, so the Runner skips its own init;
    # CPU modules need device_ids=None.
    cfg = toy_runner_cfg(
        work_dir,
        max_iters=MAX_ITERS,
        batch_size=BATCH_PER_RANK,
        miner_hook=dict(init_iter=INIT_ITER, source='queue'),
        model=toy_model_cfg(
            miner=dict(num_prototypes=4, threshold=0.0, center=center)),
        launcher='pytorch',
        model_wrapper_cfg=dict(
            type='MMDistributedDataParallel',
            device_ids=None,
            broadcast_buffers=False),
        experiment_name='ddp')
    runner = Runner.from_cfg(Config(cfg))
    runner.train()
    model = get_ori_model(runner.model)
    state = {
        k: v.detach().cpu().clone()
        for k, v in model.state_dict().items()
    }
    history = runner.message_hub.get_scalar(
        'train/relation_pos_per_anchor').data[0]
    return dict(state=state, pos_history=torch.from_numpy(history.copy()))


@pytest.mark.parametrize('center', [None, 'batch'])
def test__ranks_stay_bit_identical_in_runner_training(tmp_path, center):
    results = run_distributed(
        _train_with_runner, world_size=2, args=(str(tmp_path), center))
    state0, state1 = results[0]['state'], results[1]['state']

    assert state0.keys() == state1.keys()
    # (A NaN would also make torch.equal fail; say so clearly.)
    assert all(v.isfinite().all() for v in state0.values()
               if v.is_floating_point())
    different = [k for k in state0 if not torch.equal(state0[k], state1[k])]
    # Plain BN (SyncBN is GPU-only) keeps per-rank running statistics, and
    # mmengine's DDP does not broadcast buffers: those are the only
    # differences. Parameters, both EMAs' weights, queues, pointers and the
    # bank are bit-identical.
    assert all(k.endswith(('running_mean', 'running_var')) for k in different)
    # Check that the compared state is the interesting one.
    for prefix in ('encoder_k.', 'teacher_encoder_k.', 'teacher.backbone.'):
        assert any(k.startswith(prefix) for k in state0)
    assert ('mining_queue' in state0) == (center is not None)
    global_batch = 2 * BATCH_PER_RANK
    assert int(state0['queue_count']) == MAX_ITERS * global_batch
    assert int(state0['queue_ptr']) == MAX_ITERS * global_batch % 64
    assert bool(state0['miner.initialized'])
    assert int(state0['miner.last_cluster_iter']) == INIT_ITER
    # Labels of both ranks' shards were gathered into the queue.
    filled = state0['queue_labels'][:MAX_ITERS * global_batch]
    assert (filled >= 0).all()
    assert (state0['queue_assign'][:MAX_ITERS * global_batch] >= 0).any()
    for res in results:
        assert (res['pos_history'][INIT_ITER:] > 0).all()


def _bank_model():
    """A toy ReKD in eval mode (per-sample BN, so sharding the batch does
    not change any embedding) with a bank initialised from fixed data."""
    from mmengine.registry import init_default_scope
    from mmpretrain.registry import MODELS

    import rekd_mm  # noqa: F401

    init_default_scope('mmpretrain')
    torch.manual_seed(0)
    model = MODELS.build(toy_model_cfg(num_prototypes=4, threshold=0.0))
    model.init_weights()
    model.eval()
    gen = torch.Generator().manual_seed(1)
    model.miner.initialize(
        torch.randn(32, 16, generator=gen), distributed=False)
    return model


def _global_batch():
    from mmpretrain.structures import DataSample
    gen = torch.Generator().manual_seed(2)
    views = [torch.randn(8, 3, 16, 16, generator=gen) for _ in range(2)]
    return views, [DataSample().set_gt_label(i) for i in range(8)]


def _update_on_shard(rank, world_size):
    model = _bank_model()
    views, samples = _global_batch()
    shard = slice(4 * rank, 4 * rank + 4)
    with torch.no_grad():
        model.loss([v[shard] for v in views], samples[shard])
    return dict(
        prototypes=model.miner.prototypes.clone(),
        teacher_queue=model.teacher_queue[:, :8].clone(),
        queue_labels=model.queue_labels[:8].clone())


def test__gathered_bank_update_equals_single_process():
    single = _bank_model()
    initial = single.miner.prototypes.clone()
    views, samples = _global_batch()
    with torch.no_grad():
        single.loss(views, samples)
    assert not torch.allclose(single.miner.prototypes, initial)

    results = run_distributed(_update_on_shard, world_size=2)

    assert torch.equal(results[0]['prototypes'], results[1]['prototypes'])
    for res in results:
        torch.testing.assert_close(
            res['prototypes'], single.miner.prototypes, rtol=0, atol=1e-5)
        torch.testing.assert_close(
            res['teacher_queue'],
            single.teacher_queue[:, :8],
            rtol=0,
            atol=1e-5)
        assert res['queue_labels'].tolist() == list(range(8))
