# Copyright (c) rekd_mm contributors. All rights reserved.
"""One test per row of docs/bad_input.md.

Each bad input must stop the run with an error that names the config key,
file or value and says what to do, before the first training iteration
(except a NaN loss, found when it happens, and a corrupt image, found when
it is loaded), and a failed run must leave the work directory's existing
files as they were.
"""
import glob
import hashlib
import logging
import os.path as osp

import cv2
import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.logging import MMLogger
from mmengine.runner import Runner
from mmpretrain.registry import DATASETS
from mmpretrain.utils import get_ori_model

import rekd_mm  # noqa: F401
from rekd_mm.utils import DataPathError, check_data_roots
from tests.toy_configs import toy_model_cfg, toy_runner_cfg


def _digest(path):
    with open(path, 'rb') as f:
        return hashlib.sha256(f.read()).hexdigest()


@pytest.fixture
def work_dir(tmp_path):
    """A work directory holding an earlier run's checkpoint; yields its
    path and checks, after the test, that no file of it changed and no
    checkpoint was added."""
    root = tmp_path / 'work'
    root.mkdir()
    ckpt = root / 'iter_4.pth'
    torch.save(dict(state_dict={'w': torch.ones(2)}, meta=dict(iter=4)), ckpt)
    (root / 'last_checkpoint').write_text(str(ckpt))
    before = {p.name: _digest(p) for p in root.iterdir()}
    yield str(root)
    after = {
        name: _digest(root / name)
        for name in before if (root / name).exists()
    }
    assert after == before, 'a failed run changed the work directory'
    assert sorted(glob.glob(str(root / '*.pth'))) == [str(ckpt)]


def _runner(work_dir, model=None, **kwargs):
    kwargs.setdefault('miner_hook', dict(init_iter=2, source='queue'))
    return Runner.from_cfg(
        Config(toy_runner_cfg(work_dir, model=model, **kwargs)))


def test_more_prototypes_than_embeddings(work_dir):
    runner = _runner(work_dir, toy_model_cfg(num_prototypes=100))
    with pytest.raises(ValueError) as err:
        runner.train()
    msg = str(err.value)
    # The queue holds 2 iterations x batch 8 = 16 keys at init_iter=2.
    assert 'model.miner.num_prototypes=100' in msg and '16 keys' in msg
    assert 'init_iter' in msg and "source='dataset'" in msg
    assert runner.iter == 0


def test_more_prototypes_than_dataset_samples(work_dir):
    runner = _runner(
        work_dir,
        toy_model_cfg(num_prototypes=100),
        miner_hook=dict(init_iter=0, source='dataset'))
    with pytest.raises(
            ValueError,
            match=r'has 64 samples, fewer than '
            r'model\.miner\.num_prototypes=100\. Lower '
            r'num_prototypes or .* larger init_dataloader'):
        runner.train()
    assert runner.iter == 0


@pytest.mark.parametrize('threshold', [1.5, -1.01])
def test_threshold_outside_cosine_range(work_dir, threshold):
    with pytest.raises(ValueError) as err:
        _runner(work_dir, toy_model_cfg(threshold=threshold))
    assert 'model.miner.threshold (Θ) must lie in [-1, 1]' in str(err.value)
    assert f'got {threshold}' in str(err.value)


def test_student_and_teacher_dims_differ(work_dir):
    model = toy_model_cfg()
    model['teacher_neck']['out_channels'] = 32
    with pytest.raises(ValueError) as err:
        _runner(work_dir, model)
    assert 'model.teacher_neck.out_channels=32 differs from ' \
        'model.feat_dim=16' in str(err.value)


def test_queue_not_a_multiple_of_the_global_batch(work_dir):
    runner = _runner(work_dir, toy_model_cfg(queue_len=60))
    with pytest.raises(ValueError) as err:
        runner.train()
    msg = str(err.value)
    assert 'model.queue_len=60 is not a multiple of the global batch ' \
        'size 8' in msg
    assert 'train_dataloader.batch_size' in msg
    assert runner.iter == 0


def test_split_bn_slices_that_do_not_divide_the_batch(work_dir):
    """Batch 8 per process cannot be cut into 3 slices: refused before
    iteration 1, naming the layer, the key and the batch."""
    runner = _runner(
        work_dir,
        toy_model_cfg(
            teacher_neck=dict(
                type='NonLinearNeck',
                in_channels=128,
                hid_channels=32,
                out_channels=16,
                norm_cfg=dict(type='SplitBN', num_splits=3))))
    with pytest.raises(ValueError) as err:
        runner.train()
    msg = str(err.value)
    assert 'teacher.neck.bn0 is a SplitBN with num_splits=3' in msg
    assert 'batch per process (8)' in msg
    assert 'norm_cfg.num_splits' in msg and 'batch_size' in msg
    assert runner.iter == 0


@pytest.mark.parametrize('what', ['missing', 'empty'])
def test_missing_or_empty_data_root(tmp_path, what):
    root = tmp_path / 'fashion_mnist'
    if what == 'empty':
        root.mkdir()
    cfg = Config(toy_runner_cfg(str(tmp_path / 'work')))
    cfg.train_dataloader.dataset.data_root = str(root)
    with pytest.raises(DataPathError) as err:
        check_data_roots(cfg)
    msg = str(err.value)
    expected = 'does not exist' if what == 'missing' else \
        'is an empty directory'
    assert f"train_dataloader.dataset.data_root='{root}' {expected}" in msg
    assert '--cfg-options train_dataloader.dataset.data_root=' in msg


@pytest.fixture
def image_folder(tmp_path):
    """Two class folders of real (random-pixel) JPEGs plus one corrupt file."""
    root = tmp_path / 'images'
    for cls in ('airplane', 'cat'):
        (root / cls).mkdir(parents=True)
        for i in range(2):
            # Real, decodable JPEGs (the tests need no external data).
            pixels = np.random.RandomState(i).randint(
                0, 256, (32, 32, 3), dtype=np.uint8)
            cv2.imwrite(str(root / cls / f'{i}.jpg'), pixels)
    bad = root / 'cat' / 'zz_corrupt.jpg'
    bad.write_bytes(b'\xff\xd8\xff\xe0 half a JPEG header')
    return str(root), str(bad)


def _image_dataset(root, **load_args):
    return DATASETS.build(
        dict(
            type='CustomDataset',
            data_root=root,
            pipeline=[
                dict(type='SafeLoadImageFromFile', **load_args),
                dict(type='PackInputs')
            ]))


def test_corrupt_image_names_the_file(image_folder):
    root, bad = image_folder
    dataset = _image_dataset(root)
    paths = [dataset.get_data_info(i)['img_path'] for i in range(5)]
    bad_idx = paths.index(bad)
    assert dataset[0]['inputs'].shape == (3, 32, 32)
    with pytest.raises(OSError) as err:
        dataset[bad_idx]
    assert f"cannot decode image '{bad}'" in str(err.value)
    assert 'skip_corrupt=True' in str(err.value)


def test_corrupt_image_is_skipped_with_a_warning(image_folder):
    root, bad = image_folder
    dataset = _image_dataset(root, skip_corrupt=True)
    bad_idx = [dataset.get_data_info(i)['img_path']
               for i in range(5)].index(bad)
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = MMLogger.get_current_instance()
    logger.addHandler(handler)
    try:
        sample = dataset[bad_idx]
    finally:
        logger.removeHandler(handler)
    # Another, valid, sample instead.
    assert sample['inputs'].shape == (3, 32, 32)
    assert sample['data_samples'].img_path != bad
    warnings = [r.getMessage() for r in records if r.levelname == 'WARNING']
    assert any(bad in w and 'skipped' in w for w in warnings)


def test_teacher_checkpoint_that_matches_nothing(work_dir, tmp_path):
    path = str(tmp_path / 'teacher.pth')
    torch.save({'encoder.layer1.weight': torch.zeros(3)}, path)
    runner = _runner(
        work_dir,
        toy_model_cfg(teacher_pretrained=dict(checkpoint=path)),
        miner_hook=dict(init_iter=0, source='queue'))
    with pytest.raises(KeyError) as err:
        runner.train()
    msg = str(err.value)
    assert path in msg and "'encoder.layer1.weight'" in msg
    assert "'backbone.conv1.weight'" in msg and 'Set the prefix' in msg
    assert runner.iter == 0


class _NaNAt(Hook):
    """Make the relation loss NaN from iteration ``at`` (1-based)."""

    def __init__(self, at):
        self.at = at

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        if runner.iter + 1 == self.at:
            get_ori_model(runner.model).loss_weights['relation'] = float('nan')


def _nan_run(work_dir, guard):
    cfg = toy_runner_cfg(
        work_dir,
        max_iters=6,
        custom_hooks=[dict(type='RelationMinerHook', init_iter=2)] +
        ([dict(type='LossGuardHook')] if guard else []))
    cfg['default_hooks']['checkpoint'] = dict(
        type='AtomicCheckpointHook', by_epoch=False, interval=2)
    runner = Runner.from_cfg(Config(cfg))
    runner.register_hook(_NaNAt(5))
    return runner


def _finite(ckpt_path):
    state = torch.load(ckpt_path)['state_dict']
    return all(
        bool(torch.isfinite(v).all()) for v in state.values()
        if v.is_floating_point())


def test_nan_loss_stops_before_a_nan_checkpoint(tmp_path):
    # Without the guard mmengine trains on and saves NaN weights.
    unguarded = str(tmp_path / 'unguarded')
    _nan_run(unguarded, guard=False).train()
    assert not _finite(osp.join(unguarded, 'iter_6.pth'))

    work_dir = str(tmp_path / 'guarded')
    runner = _nan_run(work_dir, guard=True)
    with pytest.raises(FloatingPointError) as err:
        runner.train()
    last = osp.join(work_dir, 'iter_4.pth')
    assert 'loss_relation is nan at iter 5' in str(err.value)
    assert f'--resume {last}' in str(err.value)
    assert runner.iter == 4
    with open(osp.join(work_dir, 'last_checkpoint')) as f:
        assert f.read() == last
    assert not osp.exists(osp.join(work_dir, 'iter_6.pth'))
    assert _finite(osp.join(work_dir, 'iter_2.pth')) and _finite(last)
