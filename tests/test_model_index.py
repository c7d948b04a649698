# Copyright (c) rekd_mm contributors. All rights reserved.
"""model-index.yml and configs/metafile.yml (OpenMMLab's model-index format,
read by `mim search rekd_mm`) list exactly the pretraining configs, truly."""
import glob
import os.path as osp
import re

import pytest
import yaml
from mmengine.config import Config

import rekd_mm
from tests.toy_configs import REPO_ROOT

PACKAGE_DIR = osp.dirname(rekd_mm.__file__)
DATA = {
    'ImageNet': 'ImageNet-1k',
    'FashionMNIST': 'Fashion-MNIST',
    'CustomDataset': 'CIFAR-10'
}


def _load_index(root):
    with open(osp.join(root, 'model-index.yml')) as f:
        index = yaml.safe_load(f)
    collections, models = [], []
    for path in index['Import']:
        with open(osp.join(root, path)) as f:
            meta = yaml.safe_load(f)
        collections += meta.get('Collections', [])
        models += meta.get('Models', [])
    return collections, models


def test_index_lists_every_pretraining_config_once():
    _, models = _load_index(REPO_ROOT)
    names = [m['Name'] for m in models]
    assert len(names) == len(set(names))
    configs = sorted(
        osp.splitext(osp.basename(p))[0]
        for p in glob.glob(osp.join(REPO_ROOT, 'configs', '*.py')))
    assert sorted(names) == configs


def test_every_model_entry_matches_its_config():
    collections, models = _load_index(REPO_ROOT)
    collection_names = {c['Name'] for c in collections}
    for model in models:
        assert model['In Collection'] in collection_names
        assert model['Config'] == f"configs/{model['Name']}.py"
        cfg = Config.fromfile(osp.join(REPO_ROOT, model['Config']))
        assert (model['In Collection'] == 'ReKD') == (cfg.model.type == 'ReKD')
        meta = model['Metadata']
        assert meta['Training Data'] == DATA[cfg.train_dataloader.dataset.type]
        if 'Epochs' in meta:
            assert meta['Epochs'] == cfg.train_cfg.max_epochs
        else:
            assert meta['Iterations'] == cfg.train_cfg.max_iters
        # {N}xb{B} in the name; the alias rekd_mbv2_r50_200e is 8xb32.
        match = re.search(r'_(\d+)xb(\d+)-', model['Name'])
        gpus, per_gpu = map(int, match.groups()) if match else (8, 32)
        assert per_gpu == cfg.train_dataloader.batch_size
        assert meta['Batch Size'] == gpus * per_gpu
        # Nothing is claimed that was not measured or published.
        assert model['Results'] is None and 'Weights' not in model


@pytest.mark.parametrize('name', ['model-index.yml', 'configs', 'tools'])
def test_package_mim_folder_points_at_the_repository(name):
    # mim looks for <package>/.mim/{model-index.yml,configs,tools}, as in
    # mmpretrain's wheel.
    path = osp.join(PACKAGE_DIR, '.mim', name)
    assert osp.exists(path)
    assert osp.samefile(path, osp.join(REPO_ROOT, name))
    collections, models = _load_index(osp.join(PACKAGE_DIR, '.mim'))
    assert all(
        osp.isfile(osp.join(PACKAGE_DIR, '.mim', m['Config'])) for m in models)
