# Copyright (c) rekd_mm contributors. All rights reserved.
"""ReKD never trains silently without mining (issue #9, items 2, 3, 4, 6).

A checkpoint's bank and queues are checked against the built model before
iteration 1; a run whose bank would never be clustered is refused; NaN keys
never reach k-means or the bank unnoticed.
"""
import glob
import os.path as osp

import pytest
import torch
from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.runner import Runner
from mmpretrain.registry import MODELS
from mmpretrain.utils import get_ori_model

import rekd_mm  # noqa: F401
from rekd_mm.models.utils import PrototypeBank, spherical_kmeans
from rekd_mm.models.utils.state_check import ReKDStateError
from rekd_mm.utils import CheckpointLoadError
from tests.toy_configs import toy_model_cfg, toy_runner_cfg

BATCH = 8


class _CountIters(Hook):
    """Counts the training iterations that ran."""

    def __init__(self):
        self.iters = 0

    def after_train_iter(self,
                         runner,
                         batch_idx,
                         data_batch=None,
                         outputs=None):
        self.iters += 1


def _runner(work_dir, model=None, miner_hook=None, **kwargs):
    if miner_hook is None:
        miner_hook = dict(init_iter=1, source='queue')
    cfg = toy_runner_cfg(
        str(work_dir), model=model, miner_hook=miner_hook, **kwargs)
    runner = Runner.from_cfg(Config(cfg))
    counter = _CountIters()
    runner.register_hook(counter)
    return runner, counter


@pytest.fixture(scope='module')
def ckpt(tmp_path_factory):
    """3 iterations of batch 8 (queue_ptr 24), bank clustered at iter 1."""
    work_dir = tmp_path_factory.mktemp('state_ckpt')
    runner, _ = _runner(work_dir, max_iters=3, checkpoint_interval=3)
    runner.train()
    path = osp.join(str(work_dir), 'iter_3.pth')
    state = torch.load(path)['state_dict']
    assert int(state['queue_ptr']) == 24 and bool(state['miner.initialized'])
    return path


def _resume(tmp_path, path, model=None, max_iters=5, **kwargs):
    return _runner(
        tmp_path / 'resumed',
        model=model,
        max_iters=max_iters,
        resume=True,
        load_from=path,
        **kwargs)


@pytest.mark.parametrize(
    'model, key, values',
    [(toy_model_cfg(num_prototypes=8), 'model.miner.num_prototypes',
      ('has 4', 'config 8')),
     (toy_model_cfg(queue_len=128), 'model.queue_len',
      ('has 64', 'config 128')),
     (toy_model_cfg(queue_len=32), 'model.queue_len', ('has 64', 'config 32')),
     (toy_model_cfg(
         feat_dim=8,
         neck=dict(toy_model_cfg()['neck'], out_channels=8),
         teacher_neck=dict(toy_model_cfg()['teacher_neck'], out_channels=8)),
      'model.feat_dim', ('has 16', 'config 8'))],
    ids=['more-prototypes', 'longer-queue', 'shorter-queue', 'feat-dim'])
def test_resume_into_a_changed_config_stops_naming_the_key(
        ckpt, tmp_path, model, key, values):
    runner, counter = _resume(tmp_path, ckpt, model)
    with pytest.raises(ReKDStateError) as err:
        runner.train()
    msg = str(err.value)
    assert key in msg and ckpt in msg and 'reinit_mismatched_state' in msg
    assert all(v in msg for v in values), msg
    assert counter.iters == 0
    assert glob.glob(str(tmp_path / 'resumed' / '*.pth')) == []


def test_resume_with_another_mining_space_stops(ckpt, tmp_path):
    model = toy_model_cfg()
    model['miner']['center'] = 'batch'
    runner, counter = _resume(tmp_path, ckpt, model)
    with pytest.raises(ReKDStateError, match=r"model\.miner\.center"):
        runner.train()
    assert counter.iters == 0


def test_resume_with_another_global_batch_stops(ckpt, tmp_path):
    runner, counter = _resume(tmp_path, ckpt, batch_size=16)
    with pytest.raises(ReKDStateError) as err:
        runner.train()
    msg = str(err.value)
    assert 'train_dataloader.batch_size' in msg and 'is 24' in msg
    assert 'global batch 16' in msg
    assert counter.iters == 0


def test_reinit_option_restarts_bank_and_queues_consistently(ckpt, tmp_path):
    runner, counter = _resume(
        tmp_path,
        ckpt,
        toy_model_cfg(num_prototypes=8),
        max_iters=6,
        miner_hook=dict(
            init_iter=1, source='queue', reinit_mismatched_state=True))
    runner.train()
    model = get_ori_model(runner.model)
    assert counter.iters == 3
    bank = model.miner
    assert bank.is_initialized and bank.prototypes.shape == (8, 16)
    # Re-clustered after the resume at iteration 3, from the 8 keys queued
    # since (the restored queue state was dropped, not mixed in).
    assert int(bank.last_cluster_iter) == 4
    assert torch.isfinite(bank.prototypes).all()
    assert (bank.prototypes.norm(dim=1) > 0.99).all()
    assert int(model.queue_count) == 3 * BATCH
    assert int(model.queue_ptr) == 3 * BATCH


@pytest.mark.parametrize('bad', ['zero', 'nan'])
def test_bank_flagged_initialised_with_bad_prototypes_is_refused(
        ckpt, tmp_path, bad):
    saved = torch.load(ckpt)
    protos = saved['state_dict']['miner.prototypes']
    protos[1] = 0.0 if bad == 'zero' else float('nan')
    path = str(tmp_path / 'bad_bank.pth')
    torch.save(saved, path)
    runner, counter = _resume(tmp_path, path)
    with pytest.raises(
            ReKDStateError,
            match='1 of its 4 prototypes are '
            'zero or not finite'):
        runner.train()
    assert counter.iters == 0


def test_load_from_a_mocov2_checkpoint_starts_the_queues_empty(tmp_path):
    """A MoCo v2 checkpoint has the student, its queue and queue_ptr, but no
    queue_count / teacher queue. Its pointer must not be mixed with the
    fresh count: k-means would cluster slots never written (zeros in the
    batch-centred mining queue, i.e. a zero bank)."""
    model_cfg = toy_model_cfg()
    model_cfg['miner']['center'] = 'batch'
    state = MODELS.build(model_cfg).state_dict()
    moco = {
        k: v
        for k, v in state.items()
        if k.startswith(('backbone.', 'neck.', 'encoder_k.'))
    }
    moco['queue'] = state['queue']
    moco['queue_ptr'] = torch.tensor([24])
    path = str(tmp_path / 'mocov2.pth')
    torch.save(dict(state_dict=moco, meta=dict(iter=800)), path)
    runner, _ = _runner(
        tmp_path / 'work',
        model=model_cfg,
        max_iters=3,
        miner_hook=dict(init_iter=2, source='queue'),
        load_from=path)
    runner.train()
    model = get_ori_model(runner.model)
    assert model.miner.is_initialized
    assert torch.isfinite(model.miner.prototypes).all()
    assert (model.miner.prototypes.norm(dim=1) > 0.99).all()
    assert int(model.queue_ptr) == int(model.queue_count) == 3 * BATCH


@pytest.mark.parametrize('content', [b'', b'\x80\x02}q\x00(X\x03'])
def test_resume_of_a_broken_checkpoint_names_the_file(tmp_path, content):
    path = str(tmp_path / 'iter_9.pth')
    with open(path, 'wb') as f:
        f.write(content)
    runner, counter = _resume(tmp_path, path)
    with pytest.raises(CheckpointLoadError) as err:
        runner.train()
    assert path in str(err.value)
    assert counter.iters == 0


# ------------------------------------------------------------ item 4


def test_training_without_a_miner_hook_is_refused(tmp_path):
    cfg = toy_runner_cfg(str(tmp_path), max_iters=2)
    runner = Runner.from_cfg(Config(cfg))
    with pytest.raises(RuntimeError, match='without a RelationMinerHook'):
        runner.train()
    assert runner.iter == 0


def test_first_clustering_after_the_end_of_training_is_refused(tmp_path):
    runner, counter = _runner(
        tmp_path, max_iters=3, miner_hook=dict(init_iter=3, source='queue'))
    with pytest.raises(ValueError) as err:
        runner.train()
    msg = str(err.value)
    assert 'iteration 3 (init_iter=3)' in msg and 'after 3 iterations' in msg
    assert 'allow_no_mining=True' in msg
    assert counter.iters == 0


def test_init_epoch_after_the_end_of_training_is_refused(tmp_path):
    runner, _ = _runner(
        tmp_path, max_iters=3, miner_hook=dict(init_epoch=1, source='queue'))
    # 64 samples / batch 8: epoch 1 starts at iteration 8.
    with pytest.raises(ValueError, match=r'iteration 8 \(init_epoch=1\)'):
        runner.train()


def test_allow_no_mining_trains_two_mocov2(tmp_path):
    runner, counter = _runner(
        tmp_path,
        max_iters=2,
        miner_hook=dict(init_iter=3, allow_no_mining=True))
    runner.train()
    assert counter.iters == 2
    assert not get_ori_model(runner.model).miner.is_initialized
    hist = runner.message_hub.get_scalar('train/relation_pos_per_anchor')
    assert (hist.data[0] == 0).all()


def test_two_miner_hooks_are_refused(tmp_path):
    cfg = toy_runner_cfg(
        str(tmp_path),
        max_iters=3,
        custom_hooks=[
            dict(type='RelationMinerHook', init_iter=1),
            dict(type='RelationMinerHook', init_iter=2, source='dataset')
        ])
    runner = Runner.from_cfg(Config(cfg))
    with pytest.raises(ValueError, match='2 RelationMinerHooks'):
        runner.train()
    assert runner.iter == 0


def test_contrastive_head_as_student_head_is_refused_at_build():
    model = toy_model_cfg(
        head=dict(
            type='ContrastiveHead',
            loss=dict(type='CrossEntropyLoss'),
            temperature=0.2))
    with pytest.raises(TypeError) as err:
        MODELS.build(model)
    assert "model.head.type='ContrastiveHead'" in str(err.value)
    assert 'RelationContrastiveHead' in str(err.value)


@pytest.mark.parametrize('init', ['random', 'kmeans++'])
def test_nan_embedding_never_reaches_the_bank(init):
    emb = torch.nn.functional.normalize(torch.randn(32, 8), dim=1)
    emb[5, 3] = float('nan')
    with pytest.raises(
            FloatingPointError,
            match=r'1 of the embeddings .*'
            r'NaN or inf \(e\.g\. rows \[5\]'):
        spherical_kmeans(emb, 4, init=init, distributed=False)
    bank = PrototypeBank(4, feat_dim=8)
    with pytest.raises(FloatingPointError):
        bank.initialize(emb, distributed=False, init=init)
    assert not bank.is_initialized and not bank.prototypes.any()

    bank.initialize(emb[6:], distributed=False, init=init)
    before = bank.prototypes.clone()
    assign, sim = bank.assign(emb)
    # The update step leaves the bank unchanged and flags the batch (ReKD
    # raises at its next step, without a host read in this one).
    bank.update(emb, assign, sim)
    assert torch.equal(bank.prototypes, before)
    assert int(bank.nonfinite_updates) == 1


def test_unknown_miner_key_lists_the_valid_ones():
    with pytest.raises(TypeError) as err:
        MODELS.build(
            toy_model_cfg(miner=dict(num_prototypes=4, num_protoypes=8)))
    msg = str(err.value)
    assert "model.miner has unknown keys ['num_protoypes']" in msg
    assert "'num_prototypes'" in msg and 'queue_refresh_interval' in msg
    assert 'max_positives' in msg and 'center' in msg


@pytest.mark.parametrize('kmeans_cfg, match', [
    (dict(iters=5), r"unknown keys \['iters'\]"),
    (dict(init='k-means++'), r"kmeans_cfg\.init must be"),
    (dict(num_iters=0), r'kmeans_cfg\.num_iters must be a positive int'),
])
def test_kmeans_cfg_is_checked_when_the_runner_is_built(
        tmp_path, kmeans_cfg, match):
    with pytest.raises((TypeError, ValueError), match=match):
        _runner(tmp_path, miner_hook=dict(init_iter=1, kmeans_cfg=kmeans_cfg))
