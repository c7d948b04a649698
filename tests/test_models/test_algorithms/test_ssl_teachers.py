# Copyright (c) rekd_mm contributors. All rights reserved.
"""Teachers from other OpenMMLab self-supervised methods (issue #11).

Each method's own mmpretrain algorithm is built here at toy size, with every
tensor of its state dict made unique, and saved as ``{'state_dict': ...}``.
ReKD loads it as a frozen offline teacher: every teacher tensor must come
from the file (a frozen teacher left partly random is refused), the teacher
must embed exactly as the method's encoder, and a training step must work.
The teacher's dimension is independent of the student's.
"""
import logging

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.config import Config
from mmengine.logging import MMLogger
from mmengine.registry import init_default_scope
from mmengine.runner import Runner
from mmpretrain.registry import MODELS
from mmpretrain.structures import DataSample

import rekd_mm  # noqa: F401  (registers ReKD)
from rekd_mm.engine.hooks.export_weights_hook import export_backbone_weights
from rekd_mm.models.utils.state_check import ReKDStateError
from rekd_mm.utils.checkpoint import PretrainedMismatchError
from tests.scripts import load_script
from tests.toy_configs import toy_model_cfg, toy_runner_cfg

init_default_scope('mmpretrain')

# The teacher backbone of every method: the toy ResNet-18, 128 channels out.
BACKBONE = dict(type='ResNet', depth=18, stem_channels=16, base_channels=16)
WIDTH = 128
BN = dict(type='BN1d')  # the methods' configs use SyncBN; this runs on CPU


def _nonlinear(in_channels, out_channels, num_layers=2, **kwargs):
    return dict(
        type='NonLinearNeck',
        in_channels=in_channels,
        hid_channels=32,
        out_channels=out_channels,
        num_layers=num_layers,
        norm_cfg=BN,
        **kwargs)


# Each method's model config, with its own neck type and options (those of
# its ImageNet config in mmpretrain 1.2.0), at toy width.
METHODS = dict(
    mocov2=dict(
        type='MoCo',
        queue_len=64,
        feat_dim=16,
        neck=dict(
            type='MoCoV2Neck',
            in_channels=WIDTH,
            hid_channels=32,
            out_channels=16,
            with_avg_pool=True),
        head=dict(
            type='ContrastiveHead',
            loss=dict(type='CrossEntropyLoss'),
            temperature=0.2)),
    simclr=dict(
        type='SimCLR',
        neck=_nonlinear(WIDTH, 16, with_avg_pool=True),
        head=dict(
            type='ContrastiveHead',
            loss=dict(type='CrossEntropyLoss'),
            temperature=0.1)),
    byol=dict(
        type='BYOL',
        base_momentum=0.01,
        neck=_nonlinear(
            WIDTH, 16, with_bias=True, with_last_bn=False, with_avg_pool=True),
        head=dict(
            type='LatentPredictHead',
            predictor=_nonlinear(
                16,
                16,
                with_bias=True,
                with_last_bn=False,
                with_avg_pool=False),
            loss=dict(type='CosineSimilarityLoss'))),
    mocov3=dict(
        type='MoCoV3',
        base_momentum=0.01,
        neck=_nonlinear(
            WIDTH,
            16,
            with_bias=False,
            with_last_bn=True,
            with_last_bn_affine=False,
            with_last_bias=False,
            with_avg_pool=True),
        head=dict(
            type='MoCoV3Head',
            predictor=_nonlinear(
                16,
                16,
                with_bias=False,
                with_last_bn=False,
                with_last_bn_affine=False,
                with_last_bias=False,
                with_avg_pool=False),
            loss=dict(type='CrossEntropyLoss', loss_weight=0.4),
            temperature=0.2)),
    # A 32-d embedding: the teacher's dimension differs from the student's.
    barlowtwins=dict(
        type='BarlowTwins',
        neck=_nonlinear(
            WIDTH,
            32,
            num_layers=3,
            with_last_bn=False,
            with_last_bn_affine=False,
            with_avg_pool=True),
        head=dict(
            type='LatentCrossCorrelationHead',
            in_channels=32,
            loss=dict(type='CrossCorrelationLoss'))),
    # DenseCLNeck returns (global, dense, dense-pooled): the teacher embeds
    # with its first output, the global projection of DenseCL's own InfoNCE.
    densecl=dict(
        type='DenseCL',
        queue_len=64,
        feat_dim=16,
        neck=dict(
            type='DenseCLNeck',
            in_channels=WIDTH,
            hid_channels=32,
            out_channels=16,
            num_grid=None),
        head=dict(
            type='ContrastiveHead',
            loss=dict(type='CrossEntropyLoss'),
            temperature=0.2)),
)
# Where each method keeps its momentum encoder.
MOMENTUM = dict(
    mocov2='encoder_k.',
    byol='target_net.',
    mocov3='momentum_encoder.',
    densecl='encoder_k.')


def _unique(state, seed=2):
    """``state`` with every tensor moved off any value a fresh build could
    hold (so that a tensor left unloaded is caught), BN variances kept
    positive."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for key, value in state.items():
        if value.is_floating_point():
            noise = torch.rand(value.shape, generator=gen)
            if not key.endswith('running_var'):
                noise = noise - 0.5
            value = value + 0.02 * noise
        elif key.endswith('num_batches_tracked'):
            value = value + 7
        out[key] = value
    return out


def _donor(method, tmp_path):
    """The method's algorithm, its unique weights, and their file."""
    torch.manual_seed(1)
    donor = MODELS.build(dict(METHODS[method], backbone=BACKBONE))
    state = _unique(donor.state_dict())
    donor.load_state_dict(state)
    path = str(tmp_path / f'{method}.pth')
    torch.save(dict(state_dict=state, meta=dict(epoch=200)), path)
    return donor.eval(), state, path


def _teacher_dim(method):
    return METHODS[method]['neck']['out_channels']


def _rekd(teacher_neck=None, teacher_feat_dim=None, **overrides):
    torch.manual_seed(0)
    cfg = toy_model_cfg(teacher_backbone=BACKBONE, **overrides)
    if teacher_neck is not None:
        cfg['teacher_neck'] = teacher_neck
    if teacher_feat_dim is not None:
        cfg['teacher_feat_dim'] = teacher_feat_dim
    model = MODELS.build(cfg)
    model.init_weights()
    return model


def _batch(num=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    views = [torch.randn(num, 3, 16, 16, generator=gen) for _ in range(2)]
    return views, [DataSample().set_gt_label(i % 3) for i in range(num)]


def _train_step(model, seed=0):
    """One SGD step; checks that the student moved and a frozen teacher did
    not."""
    model.train()
    student = nn.ModuleDict(dict(backbone=model.backbone, neck=model.neck))
    before = {k: v.clone() for k, v in student.state_dict().items()}
    teacher_before = {
        k: v.clone()
        for k, v in model.teacher.state_dict().items()
    }
    optim = torch.optim.SGD([p for p in model.parameters() if p.requires_grad],
                            lr=0.5)
    losses = model.loss(*_batch(seed=seed))
    loss = sum(v for k, v in losses.items() if 'loss' in k)
    assert torch.isfinite(loss)
    optim.zero_grad()
    loss.backward()
    optim.step()
    moved = {
        name
        for name, param in student.named_parameters()
        if not torch.equal(param, before[name])
    }
    with_grad = {
        name
        for name, param in student.named_parameters()
        if param.grad is not None and bool(param.grad.abs().sum() > 0)
    }
    assert moved <= with_grad
    assert all(f'neck.{k}' in moved for k, _ in model.neck.named_parameters())
    assert any(k.startswith('backbone.') for k in moved)
    if model.teacher_frozen:
        assert 'loss_teacher' not in losses
        for key, value in model.teacher.state_dict().items():
            assert torch.equal(value, teacher_before[key]), key  # BN too
    return losses


class _Records:
    """Collect the current MMLogger's records, INFO included (a Runner built
    earlier in the session may have left it at WARNING)."""

    def __enter__(self):
        self.records = []
        self.handler = logging.Handler()
        self.handler.emit = self.records.append
        self.logger = MMLogger.get_current_instance()
        self.level = self.logger.level
        self.logger.setLevel(logging.INFO)
        self.logger.addHandler(self.handler)
        return self.records

    def __exit__(self, *exc):
        self.logger.removeHandler(self.handler)
        self.logger.setLevel(self.level)


def _file_key(key, weights, method):
    """The donor's key that must load the teacher's ``key``."""
    if weights == 'auto':  # the online encoder
        return key
    part, rest = key.split('.', 1)
    index = '0' if part == 'backbone' else '1'
    return f'{MOMENTUM[method]}module.{index}.{rest}'


@pytest.mark.parametrize('method, weights',
                         [(m, 'auto') for m in METHODS] + [(m, 'momentum')
                                                           for m in MOMENTUM])
def test__ssl_checkpoint_loads_completely_as_a_frozen_teacher(
        method, weights, tmp_path):
    donor, state, path = _donor(method, tmp_path)
    model = _rekd(
        teacher_neck=METHODS[method]['neck'],
        teacher_feat_dim=_teacher_dim(method),
        teacher_pretrained=dict(checkpoint=path, weights=weights))
    teacher = model.teacher.state_dict()
    assert teacher
    for key, value in teacher.items():  # every parameter and buffer
        assert torch.equal(value, state[_file_key(key, weights, method)]), key

    # The teacher embeds exactly as the method's own encoder (for DenseCL:
    # the global projection, the neck's first output).
    encoder = nn.Sequential(donor.backbone, donor.neck) if weights == 'auto' \
        else getattr(donor, MOMENTUM[method][:-1]).module
    images = _batch(num=4, seed=3)[0][0]
    with torch.no_grad():
        expected = F.normalize(encoder(images)[0], dim=1)
    model.train()  # a frozen teacher stays in eval mode
    torch.testing.assert_close(model.teacher_embed(images), expected)

    _train_step(model)
    assert model.teacher_queue.shape == (_teacher_dim(method), 64)
    assert model.queue.shape == (16, 64)


def test__teacher_dim_differs_from_the_student_dim():
    cfg = toy_model_cfg(threshold=-1.0)
    model = _rekd(
        teacher_neck=dict(cfg['teacher_neck'], out_channels=32),
        teacher_feat_dim=32,
        miner=dict(cfg['miner'], center='batch'),
        threshold=-1.0)
    assert model.queue.shape == (16, 64)
    assert model.teacher_queue.shape == (32, 64)
    assert model.mining_queue.shape == (32, 64)
    assert model.miner.prototypes.shape == (4, 32)
    assert model.encoder_k(torch.randn(2, 3, 16, 16))[0].shape == (2, 16)

    for seed in range(2):  # 16 written slots
        _train_step(model, seed)
    model.miner.initialize(
        model.filled_mining_keys(), distributed=False, num_iters=5, seed=0)
    model.refresh_queue_assign()
    calls = []
    original = model.head.loss

    def spy(query, key, queue, pos_mask=None, mined_scale=1.0):
        calls.append((query.shape, queue.shape, pos_mask))
        return original(query, key, queue, pos_mask, mined_scale)

    model.head.loss = spy
    losses = _train_step(model, seed=2)
    query_shape, queue_shape, pos_mask = calls[0]
    # The student's loss stays in its own space; the relations come from
    # the teacher's, slot for slot.
    assert query_shape == (8, 16) and queue_shape == (16, 64)
    assert pos_mask.shape == (8, 64) and bool(pos_mask.any())
    assert float(losses['relation_pos_per_anchor']) > 0
    assert model.miner.prototypes.shape == (4, 32)
    assert torch.isfinite(model.miner.prototypes).all()


def test__teacher_neck_width_is_checked_against_teacher_feat_dim():
    cfg = toy_model_cfg()
    with pytest.raises(ValueError) as err:
        MODELS.build(
            toy_model_cfg(
                teacher_neck=dict(cfg['teacher_neck'], out_channels=32),
                teacher_feat_dim=64))
    assert 'model.teacher_neck.out_channels=32 differs from ' \
        'model.teacher_feat_dim=64' in str(err.value)
    with pytest.raises(ValueError) as err:
        MODELS.build(
            toy_model_cfg(
                teacher_neck=dict(cfg['teacher_neck'], out_channels=32)))
    assert 'set model.teacher_feat_dim=32' in str(err.value)


def test__a_neck_without_out_channels_is_checked_at_the_first_step():
    # GlobalAveragePooling has no out_channels: the toy ResNet gives 128-d.
    model = _rekd(
        teacher_neck=dict(type='GlobalAveragePooling'), teacher_feat_dim=64)
    with pytest.raises(ValueError) as err:
        model.loss(*_batch())
    msg = str(err.value)
    assert 'model.teacher_neck gives embeddings of shape (8, 128)' in msg
    assert 'model.teacher_feat_dim=64' in msg


def _dims_differ(**overrides):
    cfg = toy_model_cfg()
    return toy_model_cfg(
        teacher_neck=dict(cfg['teacher_neck'], out_channels=32),
        teacher_feat_dim=32,
        **overrides)


def test__kd_between_different_dims_needs_the_projection():
    with pytest.raises(ValueError) as err:
        MODELS.build(_dims_differ(loss_weights=dict(kd=1.0)))
    msg = str(err.value)
    for part in ('model.loss_weights.kd=1.0', 'model.feat_dim=16',
                 'model.teacher_feat_dim=32', 'model.kd_projection=True'):
        assert part in msg, part
    with pytest.raises(ValueError, match=r'model\.loss_weights\.kd=0\.0'):
        MODELS.build(_dims_differ(kd_projection=True))


def test__kd_projection_is_trained_by_the_distillation():
    torch.manual_seed(0)
    model = MODELS.build(
        _dims_differ(loss_weights=dict(kd=0.5), kd_projection=True))
    model.init_weights()
    assert model.kd_projection.weight.shape == (32, 16)
    model.train()
    views, samples = _batch()
    losses = model.loss(views, samples)
    # Closed form: 2 - 2 cos(normalise(P q_s), q_t), weighted (the online
    # networks are unchanged by the step's momentum update).
    with torch.no_grad():
        q_s = F.normalize(model.neck(model.backbone(views[0]))[0], dim=1)
        q_t = F.normalize(
            model.teacher.neck(model.teacher.backbone(views[0]))[0], dim=1)
        q_p = F.normalize(model.kd_projection(q_s), dim=1)
        expected = 0.5 * (2 - 2 * (q_p * q_t).sum(1)).mean()
    torch.testing.assert_close(losses['loss_kd'], expected)
    sum(v for k, v in losses.items() if 'loss' in k).backward()
    grad = model.kd_projection.weight.grad
    assert grad is not None and torch.isfinite(grad).all()
    assert float(grad.abs().sum()) > 0
    assert 'kd_projection.weight' in model.state_dict()


def test__the_kd_projection_leaves_the_initialisation_unchanged():
    # Same seed, distillation off / on: every weight, buffer and queue
    # that both models have is identical after init_weights (a paired
    # ablation); only the projection is new.
    states = []
    for overrides in (dict(),
                      dict(loss_weights=dict(kd=0.5), kd_projection=True)):
        torch.manual_seed(0)
        model = MODELS.build(_dims_differ(**overrides))
        model.init_weights()
        states.append(model.state_dict())
    plain, with_kd = states
    assert set(with_kd) - set(plain) == {
        'kd_projection.weight', 'kd_projection.bias'
    }
    for key, value in plain.items():
        torch.testing.assert_close(with_kd[key], value, msg=key)
    # And the projection itself is reproducible from the seed.
    torch.manual_seed(0)
    again = MODELS.build(
        _dims_differ(loss_weights=dict(kd=0.5), kd_projection=True))
    torch.testing.assert_close(again.kd_projection.weight,
                               with_kd['kd_projection.weight'])


def _export_teacher(state, out_dir):
    """ExportWeightsHook's teacher file: ``{'state_dict': {'backbone.*'}}``.
    """
    parts = dict(teacher='teacher.backbone.')
    return export_backbone_weights(
        state, str(out_dir), parts, required=('teacher', ))['teacher']


def _toy_teacher_state(seed=3):
    """The teacher of a toy ReKD with unique weights."""
    torch.manual_seed(seed)
    return _unique(MODELS.build(toy_model_cfg()).teacher.state_dict(), seed)


def test__frozen_teacher_with_a_random_neck_is_refused(tmp_path):
    # ExportWeightsHook's teacher file holds the backbone only.
    state = {f'teacher.{k}': v for k, v in _toy_teacher_state().items()}
    path = _export_teacher(state, tmp_path)
    with pytest.raises(PretrainedMismatchError) as err:
        _rekd(teacher_pretrained=dict(checkpoint=path))
    msg = str(err.value)
    assert path in msg and 'leaves 4 of' in msg
    assert "'neck.mlp.0.weight'" in msg and "'neck.mlp.2.bias'" in msg
    assert 'model.teacher_neck' in msg and 'frozen=False' in msg

    # An online teacher trains the neck: loaded backbone, a warning.
    with _Records() as records:
        model = _rekd(teacher_pretrained=dict(checkpoint=path, frozen=False))
    warnings = [r.getMessage() for r in records if r.levelname == 'WARNING']
    assert any('neck.mlp.0.weight' in w and path in w for w in warnings)
    for key, value in model.teacher.backbone.state_dict().items():
        assert torch.equal(value, state[f'teacher.backbone.{key}']), key


def test__a_neck_of_another_type_is_named_with_the_files_keys(tmp_path):
    # A BYOL checkpoint (NonLinearNeck) into a teacher with a MoCoV2Neck.
    _, _, path = _donor('byol', tmp_path)
    with pytest.raises(PretrainedMismatchError) as err:
        _rekd(teacher_pretrained=dict(checkpoint=path))
    msg = str(err.value)
    assert path in msg and "'neck.mlp.0.weight'" in msg
    assert "'neck.fc0.weight'" in msg  # what the file has instead


@pytest.mark.parametrize('weights', ['auto', 'backbone'])
@pytest.mark.parametrize(
    'fmt', ['state_dict', 'extract', 'extract_keep_prefix', 'export_hook'])
def test__plain_backbone_files_load(fmt, weights, tmp_path):
    teacher = _toy_teacher_state()
    backbone = {
        k[len('backbone.'):]: v
        for k, v in teacher.items() if k.startswith('backbone.')
    }
    rekd_ckpt = str(tmp_path / 'iter_1.pth')
    torch.save(
        dict(state_dict={f'teacher.{k}': v
                         for k, v in teacher.items()}), rekd_ckpt)
    path = str(tmp_path / 'teacher_backbone.pth')
    if fmt == 'state_dict':
        torch.save(backbone, path)
    elif fmt.startswith('extract'):
        tool = load_script('tools/model_converters/extract_backbone.py')
        tool.extract_backbone(
            rekd_ckpt,
            path,
            prefix='teacher.backbone.',
            keep_prefix=fmt == 'extract_keep_prefix')
    else:
        path = _export_teacher(torch.load(rekd_ckpt)['state_dict'], tmp_path)
    # Without its neck the teacher embeds with the pooled backbone features.
    model = _rekd(
        teacher_neck=dict(type='GlobalAveragePooling'),
        teacher_feat_dim=WIDTH,
        teacher_pretrained=dict(checkpoint=path, weights=weights))
    for key, value in model.teacher.state_dict().items():
        assert torch.equal(value, teacher[key]), key
    _train_step(model)
    assert model.miner.prototypes.shape == (4, WIDTH)


def test__auto_uses_the_only_momentum_encoder_and_logs_it(tmp_path):
    _, state, _ = _donor('byol', tmp_path)
    target = {k: v for k, v in state.items() if k.startswith('target_net.')}
    path = str(tmp_path / 'byol_target.pth')
    torch.save(target, path)
    with _Records() as records:
        model = _rekd(
            teacher_neck=METHODS['byol']['neck'],
            teacher_pretrained=dict(checkpoint=path))
    for key, value in model.teacher.state_dict().items():
        assert torch.equal(value, state[_file_key(key, 'momentum', 'byol')])
    infos = [r.getMessage() for r in records if r.levelname == 'INFO']
    assert any("weights='momentum'" in m and "'target_net.module.0.'" in m
               and 'weights=auto' in m and path in m for m in infos), infos


def test__auto_refuses_an_ambiguous_checkpoint(tmp_path):
    # A ReKD checkpoint holds two online encoders: student and teacher.
    torch.manual_seed(0)
    path = str(tmp_path / 'rekd.pth')
    torch.save(
        dict(state_dict=MODELS.build(toy_model_cfg()).state_dict()), path)
    with pytest.raises(PretrainedMismatchError) as err:
        _rekd(teacher_pretrained=dict(checkpoint=path))
    msg = str(err.value)
    assert path in msg and "['', 'teacher.']" in msg
    assert 'model.teacher_pretrained.prefix' in msg
    _rekd(teacher_pretrained=dict(checkpoint=path, prefix='teacher.'))

    # Two momentum encoders and no online one.
    _, state, _ = _donor('mocov2', tmp_path)
    both = {k: v for k, v in state.items() if k.startswith('encoder_k.')}
    both.update(
        {'target_net.' + k[len('encoder_k.'):]: v
         for k, v in both.items()})
    torch.save(both, path)
    with pytest.raises(PretrainedMismatchError) as err:
        _rekd(teacher_pretrained=dict(checkpoint=path))
    assert path in str(err.value)
    assert "['encoder_k.', 'target_net.']" in str(err.value)


def test__a_file_with_no_encoder_names_the_file_and_its_prefixes(tmp_path):
    path = str(tmp_path / 'other.pth')
    torch.save({'model.encoder.conv.weight': torch.zeros(2)}, path)
    with pytest.raises(PretrainedMismatchError) as err:
        _rekd(teacher_pretrained=dict(checkpoint=path))
    msg = str(err.value)
    assert path in msg and "['model.']" in msg
    with pytest.raises(ValueError, match='teacher_pretrained.weights'):
        MODELS.build(
            toy_model_cfg(
                teacher_pretrained=dict(checkpoint=path, weights='ema')))
    with pytest.raises(ValueError) as err:
        MODELS.build(
            toy_model_cfg(
                teacher_pretrained=dict(checkpoint=path, strict=False)))
    assert "unknown keys ['strict']" in str(err.value)
    assert "'weights'" in str(err.value)  # the valid keys are listed


def test__a_changed_teacher_dim_is_refused_when_loading_state():
    torch.manual_seed(0)
    trained = MODELS.build(_dims_differ()).state_dict()
    shared = MODELS.build(toy_model_cfg())  # teacher_feat_dim unset: 16
    with pytest.raises(ReKDStateError) as err:
        shared.load_state_dict(trained, strict=False)
    msg = str(err.value)
    assert 'model.teacher_feat_dim (unset, so model.feat_dim)' in msg
    assert "has 32 (the teacher queue's keys), the config 16" in msg
    assert "has 32 (the prototypes' width), the config 16" in msg
    assert 'model.feat_dim:' not in msg  # the student's queue fits


def test__resume_into_a_changed_teacher_dim_is_refused(tmp_path):
    hook = dict(init_iter=1, source='queue', allow_no_mining=True)
    first = Runner.from_cfg(
        Config(
            toy_runner_cfg(
                str(tmp_path / 'first'),
                max_iters=1,
                checkpoint_interval=1,
                miner_hook=hook)))
    first.train()
    ckpt = str(tmp_path / 'first' / 'iter_1.pth')
    resumed = Runner.from_cfg(
        Config(
            toy_runner_cfg(
                str(tmp_path / 'resumed'),
                max_iters=2,
                miner_hook=hook,
                model=_dims_differ(),
                resume=True,
                load_from=ckpt)))
    with pytest.raises(ReKDStateError) as err:
        resumed.train()
    msg = str(err.value)
    assert ckpt in msg and 'model.teacher_feat_dim:' in msg
    assert "has 16 (the teacher queue's keys), the config 32" in msg
    assert 'model.feat_dim:' not in msg
    assert resumed.iter == 0
