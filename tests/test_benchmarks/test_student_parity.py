# Copyright (c) rekd_mm contributors. All rights reserved.
"""benchmarks/student_parity.py on tiny models (8 Fashion-MNIST images per
batch at 16 px, split BN in two groups): ReKD that never mines trains its
student exactly as mmpretrain's MoCo does, given the same permutation."""
import os.path as osp

import mmpretrain.models.selfsup.moco as moco_module
import pytest
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmpretrain.registry import MODELS

from tests.scripts import load_script
from tests.toy_configs import (FASHION_MNIST_ROOT, toy_dataloader_cfg,
                               toy_model_cfg)

SCRIPT = 'benchmarks/student_parity.py'
SPLIT_BN = dict(type='SplitBN', num_splits=2)


def _configs(tmp_path, moco_type='MoCo', **moco_options):
    """A toy ReKD config and the MoCo v2 config of its student
    (``moco_options``: more arguments of the MoCo model)."""
    assert osp.isdir(FASHION_MNIST_ROOT), 'run tools/setup_env.sh first'
    rekd = toy_model_cfg(
        backbone=dict(
            type='MobileNetV2', widen_factor=0.25, norm_cfg=SPLIT_BN))
    moco = dict(
        type=moco_type,
        queue_len=rekd['queue_len'],
        feat_dim=rekd['feat_dim'],
        momentum=rekd['momentum'],
        data_preprocessor=rekd['data_preprocessor'],
        backbone=rekd['backbone'],
        neck=rekd['neck'],
        head=dict(
            type='ContrastiveHead',
            loss=dict(type='CrossEntropyLoss'),
            temperature=0.2),
        **moco_options)
    paths = []
    for name, model in (('rekd', rekd), ('moco', moco)):
        path = tmp_path / f'{name}.py'
        Config(
            dict(
                model=model,
                train_dataloader=toy_dataloader_cfg(batch_size=16),
                optim_wrapper=dict(
                    optimizer=dict(
                        type='SGD', lr=0.05, momentum=0.9, weight_decay=5e-4)),
                train_cfg=dict(type='IterBasedTrainLoop', max_iters=10),
                custom_imports=dict(
                    imports=['rekd_mm', 'benchmarks.analysis_models']),
                default_scope='mmpretrain')).dump(str(path))
        paths.append(str(path))
    return paths


@pytest.mark.parametrize('perm', ['hash', 'randperm'])
def test_shared_permutation_trains_the_same_student(tmp_path, perm):
    parity = load_script(SCRIPT)
    rekd_cfg, moco_cfg = _configs(tmp_path)
    out = tmp_path / 'parity.json'
    args = parity.parse_args([
        '--rekd-config', rekd_cfg, '--mocov2-config', moco_cfg, '--perm', perm,
        '--steps', '3', '--param-every', '1', '--out',
        str(out)
    ])
    original = moco_module.batch_shuffle_ddp
    results = parity.run(args)
    # mmpretrain's shuffle is restored for whatever runs next.
    assert moco_module.batch_shuffle_ddp is original
    losses = [(r['mocov2'], r['rekd_no_relation']) for r in results['records']]
    assert len(losses) == 3
    # Training moves the loss, and both follow the same trajectory exactly.
    assert losses[0][0] != losses[2][0]
    assert all(moco == rekd for moco, rekd in losses)
    assert [
        c['max_relative_state_difference'] for c in results['param_checks']
    ] == [0.0, 0.0, 0.0]


def test_own_permutations_differ_from_the_first_step(tmp_path):
    """The control: with split BN the permutation changes the loss, so the
    equality above is not one that any permutation would give."""
    parity = load_script(SCRIPT)
    rekd_cfg, moco_cfg = _configs(tmp_path)
    args = parity.parse_args([
        '--rekd-config', rekd_cfg, '--mocov2-config', moco_cfg, '--perm',
        'own', '--steps', '1'
    ])
    record = parity.run(args)['records'][0]
    assert abs(record['mocov2'] - record['rekd_no_relation']) > 1e-4
    summary = parity.summarise([record])
    assert summary['max_abs_loss_gap'] == pytest.approx(
        abs(record['mocov2'] - record['rekd_no_relation']))


def test_refuses_configs_of_the_wrong_algorithm(tmp_path):
    parity = load_script(SCRIPT)
    rekd_cfg, moco_cfg = _configs(tmp_path)
    args = parity.parse_args(
        ['--rekd-config', moco_cfg, '--mocov2-config', rekd_cfg])
    with pytest.raises(ValueError, match='--mocov2-config'):
        parity.load_configs(args)


def test_moco_hash_shuffle_trains_like_rekd_without_relations(tmp_path):
    """``MoCoHashShuffle`` (benchmarks/analysis_models.py) is mmpretrain's
    MoCo with ReKD's own permutation (``salt='seed'``: ReKD's salt of the
    same seed): each model shuffling by itself, the two students stay
    equal."""
    parity = load_script(SCRIPT)
    rekd_cfg, moco_cfg = _configs(
        tmp_path, moco_type='MoCoHashShuffle', salt='seed')
    original = moco_module.batch_shuffle_ddp
    args = parity.parse_args([
        '--rekd-config', rekd_cfg, '--mocov2-config', moco_cfg, '--perm',
        'own', '--steps', '2', '--param-every', '1'
    ])
    results = parity.run(args)
    assert moco_module.batch_shuffle_ddp is original
    assert all(r['mocov2'] == r['rekd_no_relation']
               for r in results['records'])
    assert results['param_checks'][-1]['max_relative_state_difference'] == 0


def test_hash_permutation_is_rekds_own(tmp_path):
    """``--perm hash`` hands ReKD the permutation it draws by itself: its
    losses are the same whether it is given the permutation or not (and the
    same seed reads the same batches)."""
    parity = load_script(SCRIPT)
    rekd_cfg, moco_cfg = _configs(tmp_path)
    losses = {}
    for perm in ('hash', 'own'):
        args = parity.parse_args([
            '--rekd-config', rekd_cfg, '--mocov2-config', moco_cfg, '--perm',
            perm, '--steps', '2'
        ])
        losses[perm] = [
            r['rekd_no_relation'] for r in parity.run(args)['records']
        ]
    assert losses['hash'] == losses['own']


def test_moco_hash_shuffle_sequence_selects_another_permutation(tmp_path):
    """Another ``sequence`` shuffles the keys differently from ReKD, salt
    and all (the students part at the first step; ``sequence=0`` keeps them
    equal, see above), and bad values are refused when the model is
    built."""
    parity = load_script(SCRIPT)
    rekd_cfg, moco_cfg = _configs(
        tmp_path, moco_type='MoCoHashShuffle', sequence=1, salt='seed')
    args = parity.parse_args([
        '--rekd-config', rekd_cfg, '--mocov2-config', moco_cfg, '--perm',
        'own', '--steps', '1'
    ])
    record = parity.run(args)['records'][0]
    assert abs(record['mocov2'] - record['rekd_no_relation']) > 1e-4
    for option, match in ((dict(sequence=-1), 'model.sequence'),
                          (dict(salt='run'), 'model.salt')):
        rekd_cfg, moco_cfg = _configs(
            tmp_path, moco_type='MoCoHashShuffle', **option)
        args = parity.parse_args(
            ['--rekd-config', rekd_cfg, '--mocov2-config', moco_cfg])
        with pytest.raises(ValueError, match=match):
            parity.run(args)


def test_moco_seeded_randperm_draws_its_own_sequence(tmp_path):
    """``MoCoSeededRandperm`` shuffles step ``s`` by ``torch.randperm`` from
    a generator seeded with ``sequence * 2**20 + s`` (closed form), and its
    sequence is what trains: two sequences part the MoCo student at the
    first step while ReKD's stays the same."""
    parity = load_script(SCRIPT)
    init_default_scope('mmpretrain')  # SplitBN and the backbone's layers
    losses = []
    for sequence in (0, 1):
        rekd_cfg, moco_cfg = _configs(
            tmp_path, moco_type='MoCoSeededRandperm', sequence=sequence)
        model = MODELS.build(Config.fromfile(moco_cfg).model)
        model.encoder_k.steps.fill_(5)
        expected = torch.randperm(
            16, generator=torch.Generator().manual_seed(sequence * 2**20 + 5))
        assert torch.equal(model.permutation(16), expected)
        args = parity.parse_args([
            '--rekd-config', rekd_cfg, '--mocov2-config', moco_cfg, '--perm',
            'own', '--steps', '1'
        ])
        losses.append(parity.run(args)['records'][0])
    assert abs(losses[0]['mocov2'] - losses[1]['mocov2']) > 1e-4
    assert losses[0]['rekd_no_relation'] == losses[1]['rekd_no_relation']
    _, moco_cfg = _configs(
        tmp_path, moco_type='MoCoSeededRandperm', sequence=-1)
    with pytest.raises(ValueError, match='model.sequence'):
        MODELS.build(Config.fromfile(moco_cfg).model)
