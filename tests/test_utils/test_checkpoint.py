# Copyright (c) rekd_mm contributors. All rights reserved.
"""Checkpoints under torch's ``weights_only=True`` default.

Our own (mmengine) checkpoints resume with the allow-list that ``import
rekd_mm`` registers; a crafted pickle is refused wherever a file is loaded:
``load_state_dict_file``, the offline teacher, ``init_cfg=Pretrained``.
"""
import os
import os.path as osp
import pickle

import pytest
import torch
from mmengine.config import Config
from mmengine.logging import HistoryBuffer
from mmengine.runner import Runner
from mmpretrain.registry import MODELS

import rekd_mm  # noqa: F401  (registers the checkpoint safe globals)
from rekd_mm.utils import (PretrainedMismatchError, load_prefixed_weights,
                           load_state_dict_file)
from rekd_mm.utils.checkpoint import mmengine_checkpoint_globals
from tests.toy_configs import toy_model_cfg, toy_runner_cfg


def _names(entries):
    """Full names under which torch looks the allow-listed globals up."""
    return {
        e[1] if isinstance(e, tuple) else f'{e.__module__}.{e.__qualname__}'
        for e in entries
    }


@pytest.fixture(scope='module')
def real_checkpoint(tmp_path_factory):
    """A checkpoint written by mmengine's own CheckpointHook after 3
    iterations of the toy ReKD (optimizer, param scheduler, message hub,
    meta, an initialised prototype bank)."""
    work_dir = str(tmp_path_factory.mktemp('real_ckpt'))
    cfg = toy_runner_cfg(
        work_dir,
        max_iters=3,
        checkpoint_interval=3,
        miner_hook=dict(init_iter=1, source='queue'))
    Runner.from_cfg(Config(cfg)).train()
    return osp.join(work_dir, 'iter_3.pth')


class _MkdirOnLoad:
    """A pickle payload that creates ``path`` (a directory in the test's tmp
    dir: harmless) when unpickled by a plain ``pickle.load``."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return os.mkdir, (self.path, )


class _GetattrOnLoad:
    """Asks the unpickler for ``getattr(obj, name)``."""

    def __init__(self, obj, name):
        self.obj, self.name = obj, name

    def __reduce__(self):
        return getattr, (self.obj, self.name)


def _malicious_checkpoint(tmp_path, name='evil.pth'):
    marker = str(tmp_path / f'{name}.marker')
    path = str(tmp_path / name)
    # A valid-looking mmpretrain checkpoint with the payload in its meta.
    torch.save(
        dict(
            state_dict={'backbone.conv1.weight': torch.zeros(1)},
            meta=dict(payload=_MkdirOnLoad(marker))), path)
    return path, marker


def test_real_checkpoint_needs_exactly_the_allow_listed_globals(
        real_checkpoint):
    entries = mmengine_checkpoint_globals()
    saved = torch.serialization.get_safe_globals()
    try:
        torch.serialization.clear_safe_globals()
        found = set(
            torch.serialization.get_unsafe_globals_in_checkpoint(
                real_checkpoint))
        # Every global the pickle names is allow-listed (the dtype classes
        # are not named by the pickle: they are the types BUILD checks)...
        assert found <= _names(entries)
        assert 'builtins.getattr' in found
        torch.serialization.add_safe_globals(entries)
        ckpt = torch.load(real_checkpoint)  # torch's default: weights_only
        # ...and each entry is needed: without it the load fails.
        for left_out in entries:
            torch.serialization.clear_safe_globals()
            torch.serialization.add_safe_globals(
                [e for e in entries if e is not left_out])
            with pytest.raises(pickle.UnpicklingError):
                torch.load(real_checkpoint)
    finally:
        torch.serialization.clear_safe_globals()
        torch.serialization.add_safe_globals(saved)
    assert set(ckpt) >= {
        'meta', 'state_dict', 'message_hub', 'optimizer', 'param_schedulers'
    }
    assert isinstance(ckpt['message_hub']['log_scalars']['train/loss'],
                      HistoryBuffer)
    assert bool(ckpt['state_dict']['miner.initialized'])


def test_resume_of_a_real_checkpoint_restores_the_bank(real_checkpoint,
                                                       tmp_path):
    saved = torch.load(real_checkpoint)['state_dict']
    cfg = toy_runner_cfg(
        str(tmp_path),
        max_iters=4,
        miner_hook=dict(init_iter=1, source='queue'),
        resume=True,
        load_from=real_checkpoint)
    runner = Runner.from_cfg(Config(cfg))
    runner.train()
    assert runner.iter == 4
    miner = runner.model.miner
    # Restored, not clustered again at the resumed iteration 3.
    assert miner.is_initialized
    assert int(miner.last_cluster_iter) == int(
        saved['miner.last_cluster_iter']) == 1
    # One iteration trained on after the restore: the queue moved on by
    # one batch from the saved pointer.
    assert int(runner.model.queue_ptr) == (int(saved['queue_ptr']) + 8) % 64


def test_stock_history_buffer_methods_resolve_and_other_getattr_is_refused(
        tmp_path):
    good = str(tmp_path / 'good.pth')
    torch.save(dict(fn=_GetattrOnLoad(HistoryBuffer, 'mean')), good)
    assert torch.load(good)['fn'] is HistoryBuffer.mean
    # What a real getattr would hand out: any attribute of an allow-listed
    # object, e.g. a function whose __globals__ lead anywhere.
    for obj, name in ((HistoryBuffer, '__init__'),
                      (HistoryBuffer, 'register_statistics'), (torch.Tensor,
                                                               'new_tensor')):
        path = str(tmp_path / f'{name}.pth')
        torch.save(dict(fn=_GetattrOnLoad(obj, name)), path)
        with pytest.raises(pickle.UnpicklingError, match='refusing getattr'):
            torch.load(path)
        with pytest.raises(RuntimeError, match='weights_only=True'):
            load_state_dict_file(path)


def test_malicious_pickle_is_armed_and_refused_everywhere(tmp_path):
    path, marker = _malicious_checkpoint(tmp_path)
    armed, armed_marker = _malicious_checkpoint(tmp_path, 'armed.pth')
    # The payload works when loaded without protection...
    torch.load(armed, weights_only=False)
    assert osp.isdir(armed_marker)

    # ...and is refused by every loading path of the project.
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path)
    with pytest.raises(RuntimeError, match=r"evil\.pth.*weights_only=True"):
        load_state_dict_file(path)

    teacher = MODELS.build(
        toy_model_cfg(teacher_pretrained=dict(checkpoint=path)))
    with pytest.raises(RuntimeError, match='weights_only=True'):
        teacher.init_weights()

    backbone = MODELS.build(
        dict(
            type='ResNet',
            depth=18,
            stem_channels=16,
            base_channels=16,
            init_cfg=dict(type='Pretrained', checkpoint=path)))
    with pytest.raises(pickle.UnpicklingError):
        backbone.init_weights()
    assert not osp.exists(marker)


def test_plain_and_mmpretrain_style_checkpoints_load(tmp_path):
    source = MODELS.build(toy_model_cfg())
    teacher_state = {
        k: v
        for k, v in source.state_dict().items() if k.startswith('teacher.')
    }
    plain = str(tmp_path / 'plain.pth')
    torch.save({k[len('teacher.'):]: v
                for k, v in teacher_state.items()}, plain)
    wrapped = str(tmp_path / 'mmpretrain.pth')
    torch.save(
        dict(
            state_dict=teacher_state,
            meta=dict(epoch=200, dataset_meta=dict(classes=('a', 'b')))),
        wrapped)

    assert load_state_dict_file(plain).keys() == {
        k[len('teacher.'):]
        for k in teacher_state
    }
    assert load_state_dict_file(wrapped).keys() == teacher_state.keys()
    for path, prefix in ((plain, ''), (wrapped, 'teacher.')):
        model = MODELS.build(
            toy_model_cfg(
                teacher_pretrained=dict(checkpoint=path, prefix=prefix)))
        model.init_weights()
        loaded = model.state_dict()
        for key, value in teacher_state.items():
            torch.testing.assert_close(loaded[key], value)


def test_prefixed_load_warns_on_missing_and_refuses_a_misshaped_key(tmp_path):
    # One loader for every prefixed load (teacher, kNN, linear probe):
    # non-strict tolerates missing keys, never a key of another shape.
    source = MODELS.build(toy_model_cfg()).teacher
    state = {f'teacher.{k}': v for k, v in source.state_dict().items()}
    no_neck = str(tmp_path / 'no_neck.pth')
    torch.save({k: v for k, v in state.items() if '.neck.' not in k}, no_neck)
    target = MODELS.build(toy_model_cfg()).teacher
    with pytest.raises(PretrainedMismatchError, match='missing, e.g.'):
        load_prefixed_weights(target, no_neck, 'teacher.', strict=True)
    match = load_prefixed_weights(target, no_neck, 'teacher.', strict=False)
    assert match.missing and all(k.startswith('neck.') for k in match.missing)
    for key, value in target.backbone.state_dict().items():
        assert torch.equal(value, source.backbone.state_dict()[key]), key

    key = 'teacher.backbone.conv1.weight'
    misshaped = str(tmp_path / 'misshaped.pth')
    torch.save(dict(state, **{key: state[key][:, :1]}), misshaped)
    with pytest.raises(KeyError) as err:
        load_prefixed_weights(target, misshaped, 'teacher.', strict=False)
    assert isinstance(err.value, PretrainedMismatchError)
    assert 'backbone.conv1.weight' in str(err.value)
    assert 'shape mismatches' in str(err.value)
