# Copyright (c) rekd_mm contributors. All rights reserved.
"""benchmarks/bn_shortcut.py on tiny ReKD runs (8 Fashion-MNIST images per
batch at 16 px): the key settings it compares, and its result files."""
import json
import os.path as osp

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmpretrain.registry import MODELS

import rekd_mm  # noqa: F401  (registers ReKD)
from tests.scripts import load_script
from tests.toy_configs import (FASHION_MNIST_ROOT, REPO_ROOT,
                               toy_dataloader_cfg, toy_model_cfg)

SCRIPT = osp.join(REPO_ROOT, 'benchmarks', 'bn_shortcut.py')
SPLIT_BN = dict(
    backbone=dict(
        type='MobileNetV2',
        widen_factor=0.25,
        norm_cfg=dict(type='SplitBN', num_splits=2)))


@pytest.fixture(scope='module')
def shortcut():
    return load_script(SCRIPT)


def _toy_run(tmp_path, name, **model_overrides):
    """A config file and a checkpoint of an untrained toy ReKD model."""
    assert osp.isdir(FASHION_MNIST_ROOT), 'run tools/setup_env.sh first'
    init_default_scope('mmpretrain')
    model_cfg = toy_model_cfg(**model_overrides)
    config = tmp_path / f'{name}.py'
    Config(
        dict(
            model=model_cfg,
            train_dataloader=toy_dataloader_cfg(batch_size=8),
            default_scope='mmpretrain')).dump(str(config))
    torch.manual_seed(0)
    model = MODELS.build(model_cfg)
    model.init_weights()
    checkpoint = tmp_path / f'{name}.pth'
    torch.save(dict(state_dict=model.state_dict()), checkpoint)
    return str(config), str(checkpoint)


class _TupleEncoder(torch.nn.Module):
    """Linear + BatchNorm, returning a tuple as mmpretrain's necks do."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(12, 4)
        self.bn = torch.nn.BatchNorm1d(4)

    def forward(self, images):
        return (self.bn(self.fc(images.flatten(1))), )


def test__keys_beside_other_images(shortcut):
    torch.manual_seed(0)
    encoder = _TupleEncoder()
    images, others = torch.randn(6, 3, 2, 2), torch.randn(6, 3, 2, 2) * 3
    encoder.eval()  # running statistics: no batch-mates involved
    torch.testing.assert_close(
        shortcut.keys_beside_others(encoder, images, others),
        shortcut.embed(encoder, images))
    encoder.train()  # batch statistics: the batch-mates matter
    assert not torch.allclose(
        shortcut.keys_beside_others(encoder, images, others),
        shortcut.embed(encoder, images),
        atol=1e-3)


def test__whole_and_split_batch_norm_runs(shortcut, tmp_path):
    whole = _toy_run(tmp_path, 'whole')
    split = _toy_run(tmp_path, 'split', **SPLIT_BN)
    out = tmp_path / 'shortcut.json'
    shortcut.main([
        '--run', 'whole', *whole, '--run', 'split', *split, '--batches', '1',
        '--out',
        str(out)
    ])
    results = json.loads(out.read_text())
    runs = {run['name']: run['keys'] for run in results['runs']}
    assert set(runs) == {'whole', 'split'}
    for keys in runs.values():
        assert set(keys) == set(shortcut.KEY_SETTINGS)
        for value in keys.values():
            assert -1 <= value['pos_cosine'] <= 1 and value['loss'] > 0
    # Whole-batch BN trains with the keys beside the query's batch-mates;
    # split BN trains with shuffled keys, so the two differ.
    assert runs['whole']['as trained'] == runs['whole']["query's batch-mates"]
    assert runs['split']['as trained'] != runs['split']["query's batch-mates"]
    markdown = (tmp_path / 'shortcut.md').read_text()
    assert '| whole |' in markdown and '| split |' in markdown


def test__missing_checkpoint_is_named(shortcut, tmp_path):
    config, _ = _toy_run(tmp_path, 'whole')
    missing = str(tmp_path / 'nope.pth')
    with pytest.raises(SystemExit, match='--run x: no file .*nope.pth'):
        shortcut.main(
            ['--run', 'x', config, missing, '--out',
             str(tmp_path / 'o.json')])
    assert not (tmp_path / 'o.json').exists()
