# Copyright (c) rekd_mm contributors. All rights reserved.
"""Every config in configs/ loads, builds, and keeps its promises.

A config whose student does not feed its neck (wrong ``in_channels``), whose
neck does not output ``feat_dim`` (the teacher's: ``teacher_feat_dim``, else
``feat_dim``), or whose MoCo v2 baseline drifted from the ReKD run it is
compared with would only fail hours into a run.
"""
import copy
import glob
import os.path as osp
import re

import mmpretrain
import pytest
import torch
import yaml
from mmengine.config import Config
from mmengine.registry import FUNCTIONS, init_default_scope
from mmpretrain.models import MoCo
from mmpretrain.registry import HOOKS, MODELS
from torch.nn.modules.batchnorm import _BatchNorm

import rekd_mm  # noqa: F401  (registers ReKD, its head and hook)
from rekd_mm.models import ReKD
from rekd_mm.models.utils import SplitBatchNorm
from tests.scripts import load_script

CONFIG_DIR = osp.join(osp.dirname(osp.dirname(__file__)), 'configs')
CONFIGS = sorted(glob.glob(osp.join(CONFIG_DIR, '*.py')))
NAMES = [osp.basename(path) for path in CONFIGS]
# Short names the design documents, each a thin child of a config named in
# mmpretrain's convention.
ALIASES = {'rekd_mbv2_r50_200e.py'}
# {algo}_{student}[-t-{teacher}]_{N}xb{B}-{schedule}_{data}.py
NAME_RE = re.compile(r'^(rekd|mocov2)_([a-z0-9-]+?)(-t-[a-z0-9-]+)?_'
                     r'(\d+)xb(\d+)-[a-z0-9-]+_[a-z0-9-]+\.py$')


def _load(name: str) -> Config:
    return Config.fromfile(osp.join(CONFIG_DIR, name))


def _build(cfg: Config):
    # As the Runner does: norm layers such as SplitBN are looked up in the
    # config's default scope.
    init_default_scope(cfg.get('default_scope') or 'mmpretrain')
    model_cfg = cfg.model.copy()
    # The Runner merges the top-level data_preprocessor the same way.
    model_cfg.setdefault('data_preprocessor', cfg.get('data_preprocessor'))
    return MODELS.build(model_cfg)


def _strip_scope(node):
    """Drop the ``_scope_`` keys that ``mmpretrain::`` bases add."""
    if isinstance(node, dict):
        return {k: _strip_scope(v) for k, v in node.items() if k != '_scope_'}
    if isinstance(node, (list, tuple)):
        return [_strip_scope(v) for v in node]
    return node


def test_design_names_exist():
    assert 'rekd_mbv2_r50_200e.py' in NAMES
    for student in ('mobilenet-v2', 'resnet18', 'efficientnet-b0',
                    'mobilenet-v3-large', 'shufflenet-v2'):
        assert f'rekd_{student}-t-resnet50_8xb32-coslr-200e_in1k.py' in NAMES
        assert f'mocov2_{student}_8xb32-coslr-200e_in1k.py' in NAMES
    for data in ('fashion-mnist', 'cifar10'):
        assert f'rekd_mobilenet-v2-t-resnet18_1xb64-400i_{data}.py' in NAMES
        assert f'mocov2_mobilenet-v2_1xb64-400i_{data}.py' in NAMES


@pytest.mark.parametrize('name', NAMES)
def test_config_builds_and_student_feeds_feat_dim(name):
    cfg = _load(name)
    assert 'rekd_mm' in cfg.custom_imports['imports']
    model = _build(cfg).eval()
    assert isinstance(model, (ReKD, MoCo))
    assert name.startswith('rekd_') == isinstance(model, ReKD)

    # The student sits at backbone/neck (so linear-probe and mmdet configs
    # load it with prefix='backbone.'), and its neck outputs feat_dim; the
    # teacher's neck outputs the teacher's own dimension (teacher_feat_dim,
    # unset = feat_dim), the one of its queue.
    feat_dim = cfg.model.feat_dim
    teacher_dim = cfg.model.get('teacher_feat_dim') or feat_dim
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        out = model.neck(model.backbone(images))[0]
        assert out.shape == (2, feat_dim)
        if isinstance(model, ReKD):
            out_t = model.teacher.neck(model.teacher.backbone(images))[0]
            assert out_t.shape == (2, teacher_dim)
            assert model.teacher_queue.shape == (teacher_dim,
                                                 cfg.model.queue_len)
    assert model.queue.shape == (feat_dim, cfg.model.queue_len)

    # The collate_fn config, `_scope_` of `mmpretrain::` bases included, is
    # callable the way Runner.build_dataloader binds it.
    collate_cfg = dict(cfg.train_dataloader.collate_fn)
    collate = FUNCTIONS.get(collate_cfg.pop('type'))
    batch = collate([dict(x=torch.zeros(2))] * 2, **collate_cfg)
    assert batch['x'].shape == (2, 2)

    hooks = [
        h for h in cfg.get('custom_hooks') or []
        if h['type'] == 'RelationMinerHook'
    ]
    if isinstance(model, ReKD):
        assert len(hooks) == 1
        hook = HOOKS.build(hooks[0])
        assert hook.source in ('queue', 'dataset')
        if hook.source == 'queue':
            # The bank is clustered from the queue: it must be able to hold
            # at least one key per prototype.
            assert cfg.model.queue_len >= model.miner.num_prototypes
    else:
        assert hooks == []


@pytest.mark.parametrize('name', [n for n in NAMES if n not in ALIASES])
def test_name_matches_batch_size(name):
    match = NAME_RE.match(name)
    assert match, f'{name} does not follow mmpretrain naming'
    num_gpus, batch = int(match.group(4)), int(match.group(5))
    cfg = _load(name)
    assert cfg.train_dataloader.batch_size == batch
    if cfg.get('auto_scale_lr') is not None:
        assert cfg.auto_scale_lr.base_batch_size == num_gpus * batch


@pytest.mark.parametrize('name', [n for n in NAMES if n.startswith('mocov2_')])
def test_mocov2_baseline_matches_its_rekd_run(name):
    """The benchmark compares each baseline with the ReKD runs of the same
    student and recipe (one per teacher, online or offline): everything but
    the teacher and the miner must be equal."""
    student, rest = re.match(r'^mocov2_([a-z0-9-]+?)_(.+)$', name).groups()
    partners = sorted(
        glob.glob(osp.join(CONFIG_DIR, f'rekd_{student}-t-*_{rest}')))
    assert partners, f'no ReKD config matches {name}'
    moco = _load(name)
    for partner in partners:
        rekd = _load(osp.basename(partner))
        for key in ('backbone', 'neck', 'queue_len', 'feat_dim', 'momentum'):
            assert _strip_scope(moco.model[key]) == \
                _strip_scope(rekd.model[key]), (partner, key)
        assert moco.model.head.temperature == rekd.model.head.temperature
        for key in ('data_preprocessor', 'train_dataloader', 'optim_wrapper',
                    'param_scheduler', 'train_cfg', 'randomness',
                    'auto_scale_lr'):
            assert _strip_scope(moco.get(key)) == \
                _strip_scope(rekd.get(key)), (partner, key)


def test_cifar10_demo_keeps_the_fashion_mnist_demo_model():
    cifar = _load('rekd_mobilenet-v2-t-resnet18_1xb64-400i_cifar10.py')
    fmnist = _load('rekd_mobilenet-v2-t-resnet18_1xb64-400i_fashion-mnist.py')
    for key in ('model', 'optim_wrapper', 'train_cfg', 'custom_hooks'):
        assert _strip_scope(cifar[key]) == _strip_scope(fmnist[key]), key
    assert cifar.train_dataloader.batch_size == \
        fmnist.train_dataloader.batch_size
    # Both demos provide labelled splits for kNN evaluation.
    for cfg in (cifar, fmnist):
        assert cfg.knn_train_dataloader.dataset.pipeline
        assert cfg.knn_val_dataloader.dataset.pipeline


def test_imagenet_recipe_is_mocov2():
    cfg = _load('rekd_mbv2_r50_200e.py')
    assert cfg.train_dataloader.dataset.data_root == 'data/imagenet/'
    assert cfg.train_dataloader.batch_size * 8 == 256
    assert cfg.optim_wrapper.optimizer.lr == 0.03
    assert cfg.optim_wrapper.optimizer.weight_decay == 1e-4
    assert cfg.train_cfg.max_epochs == 200
    assert cfg.param_scheduler[0].type == 'CosineAnnealingLR'
    assert (cfg.model.queue_len, cfg.model.feat_dim) == (65536, 128)
    assert cfg.model.momentum == 0.001
    assert cfg.model.head.temperature == 0.2
    assert cfg.model.teacher_head.temperature == 0.2
    assert cfg.model.teacher_backbone.depth == 50
    assert cfg.model.backbone.type == 'MobileNetV2'
    assert cfg.default_hooks.checkpoint.max_keep_ckpts == 3


def test_byol_teacher_config_is_mmpretrains_byol_encoder():
    """The offline BYOL teacher is BYOL's own encoder and checkpoint, so that
    the frozen teacher loads completely (a missing key stops the run)."""
    cfg = _load('rekd_mobilenet-v2-t-byol-resnet50_8xb32-coslr-200e_in1k.py')
    byol_name = 'byol_resnet50_16xb256-coslr-200e_in1k'
    byol_dir = osp.join(
        osp.dirname(mmpretrain.__file__), '.mim', 'configs', 'byol')
    byol = Config.fromfile(osp.join(byol_dir, f'{byol_name}.py'))
    assert _strip_scope(cfg.model.teacher_neck) == _strip_scope(
        byol.model.neck)
    # Same architecture; only the norm type differs (SyncBN and BN have the
    # same keys, and a frozen teacher only reads running statistics).
    teacher_backbone = _strip_scope(cfg.model.teacher_backbone)
    byol_backbone = _strip_scope(byol.model.backbone)
    assert teacher_backbone.pop('norm_cfg') == dict(type='BN')
    assert byol_backbone.pop('norm_cfg') == dict(type='SyncBN')
    assert teacher_backbone == byol_backbone
    assert cfg.model.teacher_feat_dim == byol.model.neck.out_channels
    assert cfg.model.feat_dim == 128

    # The checkpoint is the one mmpretrain's model zoo lists for BYOL.
    with open(osp.join(byol_dir, 'metafile.yml')) as f:
        zoo = {m['Name']: m for m in yaml.safe_load(f)['Models']}
    pretrained = cfg.model.teacher_pretrained
    assert pretrained.checkpoint == zoo[byol_name]['Weights']
    assert pretrained.weights == 'auto' and pretrained.frozen is True

    model = MODELS.build(cfg.model)
    assert model.teacher_frozen and model.teacher_encoder_k is None
    assert model.miner.prototypes.shape[1] == 256


# The "small4k" quality regime (docs/quality.md, "Batch-statistics shortcut
# (session 5)"): each *_1xb64-4ki_* config is its 2ki config with what the
# regime search measured (and, for ReKD, the response KD that the final
# comparison measured), and nothing else.
SMALL4K = {
    name: name.replace('-4ki_', '-2ki_')
    for name in NAMES if '_1xb64-4ki_' in name
}
SUPERVISED = {
    f'benchmarks/supervised/mobilenet-v2-cifar_1xb64-4ki_{data}.py':
    f'benchmarks/supervised/mobilenet-v2-cifar_1xb64-2ki_{data}.py'
    for data in ('cifar10', 'fashion-mnist')
}
SPLIT_BN = dict(type='SplitBN', num_splits=4)


def _crop_ranges(node) -> list:
    """crop_ratio_range of every RandomResizedCrop in a (nested) pipeline."""
    if isinstance(node, dict):
        found = []
        if node.get('type') == 'RandomResizedCrop':
            found.append(tuple(node['crop_ratio_range']))
        return found + [r for v in node.values() for r in _crop_ranges(v)]
    if isinstance(node, (list, tuple)):
        return [r for v in node for r in _crop_ranges(v)]
    return []


def _set_crop(node, crop) -> None:
    if isinstance(node, dict):
        if node.get('type') == 'RandomResizedCrop':
            node['crop_ratio_range'] = list(crop)
        for v in node.values():
            _set_crop(v, crop)
    elif isinstance(node, list):
        for v in node:
            _set_crop(v, crop)


def test_small4k_regime_has_its_configs():
    assert sorted(SMALL4K) == sorted(
        f'{algo}_1xb64-4ki_{data}.py'
        for algo in ('mocov2_mobilenet-v2-cifar',
                     'rekd_mobilenet-v2-cifar-t-resnet18-cifar')
        for data in ('cifar10', 'fashion-mnist'))
    regimes = load_script(
        osp.join(osp.dirname(CONFIG_DIR), 'benchmarks',
                 'train_runs.py')).REGIMES
    for data in ('cifar10', 'fashion-mnist'):
        small, small4k = regimes['small'][data], regimes['small4k'][data]
        assert set(small4k) == set(small)
        for key in ('probe', 'probe_options', 'data_root'):
            assert small4k[key] == small[key], key
        for key in ('mocov2', 'rekd', 'supervised'):
            assert small4k[key] == small[key].replace('-2ki_', '-4ki_'), key
            assert osp.isfile(osp.join(osp.dirname(CONFIG_DIR),
                                       small4k[key])), key


@pytest.mark.parametrize('name', sorted(SMALL4K) + sorted(SUPERVISED))
def test_small4k_config_is_its_2ki_config_with_the_measured_changes(name):
    four = _load(name)
    two = _load(SMALL4K.get(name) or SUPERVISED[name])
    contrastive = name in SMALL4K
    expected = copy.deepcopy(_strip_scope(two._cfg_dict.to_dict()))
    actual = _strip_scope(four._cfg_dict.to_dict())
    # Split BN (4 slices of 16) in every encoder of a contrastive run, and
    # its learning rate; a supervised reference keeps plain BN and lr 0.06.
    if contrastive:
        encoders = ['backbone', 'neck']
        if four.model.type == 'ReKD':
            encoders += ['teacher_backbone', 'teacher_neck']
            # Response KD through the student's projection (session 13,
            # measured in the final comparison; weight 4 since session 24),
            # the 2ki config's kd=0 otherwise.
            assert two.model.loss_weights.kd == 0
            expected['model']['loss_weights']['kd'] = 4.0
            expected['model']['kd_projection'] = True
        for key in encoders:
            expected['model'][key]['norm_cfg'] = SPLIT_BN
        expected['optim_wrapper']['optimizer']['lr'] = 0.015
        assert four.optim_wrapper.optimizer.lr == 0.015
        actual.pop('split_bn')
    else:
        assert four.optim_wrapper.optimizer.lr == 0.06
        assert 'SplitBN' not in str(four.model)
    expected['train_cfg']['max_iters'] = 4000
    assert four.train_cfg.max_iters == 4000
    # Fashion-MNIST's crops keep (0.5, 1) of the image instead of (0.2, 1).
    if name.endswith('_fashion-mnist.py'):
        for key in ('view_pipeline', 'train_pipeline',
                    'single_view_train_pipeline', 'train_dataloader'):
            _set_crop(expected[key], (0.5, 1.))
    for key in sorted(set(expected) | set(actual)):
        assert actual.get(key) == expected.get(key), key


@pytest.mark.parametrize('name', sorted(SMALL4K))
def test_small4k_every_bn_of_every_encoder_is_split(name):
    model = _build(_load(name))
    norms = [(n, m) for n, m in model.named_modules()
             if isinstance(m, _BatchNorm)]
    # Student and its momentum encoder; ReKD: the teacher's too.
    prefixes = {'backbone', 'neck', 'encoder_k'} | (
        {'teacher', 'teacher_encoder_k'} if isinstance(model, ReKD) else set())
    assert {n.split('.')[0] for n, _ in norms} == prefixes
    for n, m in norms:
        assert type(m) is SplitBatchNorm and m.num_splits == 4, n
    if isinstance(model, ReKD):
        assert model.split_batch_norm is True


def test_small4k_fashion_mnist_crops_and_the_2ki_ones():
    two_view = [
        _load(f'{algo}_1xb64-{budget}_fashion-mnist.py')
        for algo in ('mocov2_mobilenet-v2-cifar',
                     'rekd_mobilenet-v2-cifar-t-resnet18-cifar')
        for budget in ('2ki', '4ki')
    ]
    supervised = [
        _load('benchmarks/supervised/'
              f'mobilenet-v2-cifar_1xb64-{budget}_fashion-mnist.py')
        for budget in ('2ki', '4ki')
    ]
    for cfg in two_view:
        pipeline = cfg.train_dataloader.dataset.pipeline
        assert pipeline[1].type == 'MultiView' and pipeline[1].num_views == 2
        crop = (0.5, 1.) if cfg.train_cfg.max_iters == 4000 else (0.2, 1.)
        assert _crop_ranges(pipeline) == [crop]
    for cfg in supervised:
        pipeline = cfg.train_dataloader.dataset.pipeline
        assert [t.type for t in pipeline] == [
            'GrayToRGB', 'RandomResizedCrop', 'RandomApply', 'RandomFlip',
            'PackInputs'
        ]
        crop = (0.5, 1.) if cfg.train_cfg.max_iters == 4000 else (0.2, 1.)
        assert _crop_ranges(pipeline) == [crop]
    # CIFAR-10 keeps (0.2, 1) at both budgets.
    for budget in ('2ki', '4ki'):
        cfg = _load(f'mocov2_mobilenet-v2-cifar_1xb64-{budget}_cifar10.py')
        assert _crop_ranges(cfg.train_dataloader.dataset.pipeline) == [(0.2,
                                                                        1.)]
