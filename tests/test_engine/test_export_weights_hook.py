# Copyright (c) rekd_mm contributors. All rights reserved.
"""ExportWeightsHook and tools/model_converters/export_weights.py: plain
weights files that OpenMMLab tools read without importing rekd_mm.

The consumers run in fresh subprocesses that never import rekd_mm: a bare
``torch.load(weights_only=True)``, and mmpretrain's own ``tools/train.py``
running a linear probe with ``init_cfg=dict(type='Pretrained',
prefix='backbone.')``.
"""
import glob
import os
import os.path as osp
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import mmpretrain
import pytest
import torch
from mmengine.config import Config
from mmengine.runner import Runner
from mmpretrain.registry import HOOKS
from mmpretrain.utils import get_ori_model

import rekd_mm  # noqa: F401  (safe globals: the parent reads checkpoints)
from rekd_mm.engine.hooks import ExportWeightsHook
from rekd_mm.utils.checkpoint import load_state_dict_file
from tests.toy_configs import REPO_ROOT, toy_runner_cfg
from tests.toy_probe import toy_probe_cfg, write_config, write_toy_images

EXPORT_TOOL = osp.join(REPO_ROOT, 'tools', 'model_converters',
                       'export_weights.py')
MMPRETRAIN_TRAIN = osp.join(
    osp.dirname(mmpretrain.__file__), '.mim', 'tools', 'train.py')


def _run(args, timeout=180):
    env = dict(
        os.environ,
        OMP_NUM_THREADS='1',
        PYTHONWARNINGS='ignore',
        CUDA_VISIBLE_DEVICES='')
    return subprocess.run([sys.executable, *args],
                          cwd=REPO_ROOT,
                          env=env,
                          capture_output=True,
                          text=True,
                          timeout=timeout)


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    """Two iterations of the toy ReKD with the hook and a checkpoint."""
    work_dir = str(tmp_path_factory.mktemp('rekd'))
    cfg = toy_runner_cfg(
        work_dir,
        max_iters=2,
        checkpoint_interval=2,
        custom_hooks=[
            dict(type='RelationMinerHook', init_iter=1, source='queue'),
            dict(type='ExportWeightsHook')
        ])
    runner = Runner.from_cfg(Config(cfg))
    runner.train()
    state = {
        k: v.detach().clone()
        for k, v in get_ori_model(runner.model).state_dict().items()
    }
    return work_dir, state


def _part(state, prefix):
    return {
        'backbone.' + k[len(prefix):]: v
        for k, v in state.items() if k.startswith(prefix)
    }


def test_hook_writes_student_and_teacher_as_backbone_prefixed_tensors(trained):
    work_dir, state = trained
    for who, prefix in (('student', 'backbone.'), ('teacher',
                                                   'teacher.backbone.')):
        path = osp.join(work_dir, f'{who}_backbone.pth')
        ckpt = torch.load(path, map_location='cpu', weights_only=True)
        assert set(ckpt) == {'meta', 'state_dict'}
        assert ckpt['meta']['iter'] == 2
        assert ckpt['meta']['part'] == who
        expected = _part(state, prefix)
        assert expected and set(ckpt['state_dict']) == set(expected)
        for key, value in expected.items():
            assert torch.equal(ckpt['state_dict'][key], value), key
    # No temporary file is left behind.
    assert not [n for n in os.listdir(work_dir) if n.endswith('.atomic-tmp')]


def test_exports_load_with_weights_only_in_a_process_without_rekd_mm(trained):
    work_dir, _ = trained
    script = textwrap.dedent(f"""
        import pickle, sys, torch
        work_dir = {work_dir!r}
        for who in ('student', 'teacher'):
            ckpt = torch.load(f'{{work_dir}}/{{who}}_backbone.pth',
                              weights_only=True)
            keys = list(ckpt['state_dict'])
            assert keys and all(k.startswith('backbone.') for k in keys)
            print(who, len(keys))
        # The training checkpoint itself is what such a process cannot read.
        try:
            torch.load(f'{{work_dir}}/iter_2.pth', weights_only=True)
        except pickle.UnpicklingError as err:
            print('training checkpoint refused:', str(err).splitlines()[0])
        assert 'rekd_mm' not in sys.modules
    """)
    result = _run(['-c', script], timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert 'student ' in result.stdout and 'teacher ' in result.stdout
    assert 'training checkpoint refused: Weights only load failed' in \
        result.stdout


def test_mmpretrain_train_tool_probes_the_exported_student(trained, tmp_path):
    work_dir, state = trained
    student = osp.join(work_dir, 'student_backbone.pth')
    data_root = write_toy_images(str(tmp_path / 'data'))
    config = write_config(toy_probe_cfg(data_root), str(tmp_path / 'probe.py'))
    probe_dir = str(tmp_path / 'probe')
    # mmpretrain's own tools/train.py, in a process that asserts at the end
    # that rekd_mm was never imported.
    script = textwrap.dedent(f"""
        import runpy, sys
        sys.argv = [{MMPRETRAIN_TRAIN!r}, {config!r}, '--work-dir',
                    {probe_dir!r}, '--no-persistent-workers',
                    '--cfg-options',
                    'model.backbone.init_cfg.checkpoint={student}']
        runpy.run_path(sys.argv[0], run_name='__main__')
        assert 'rekd_mm' not in sys.modules
    """)
    result = _run(['-c', script])
    assert result.returncode == 0, result.stderr[-3000:]
    logs = glob.glob(osp.join(probe_dir, '*', '*.log'))
    assert len(logs) == 1
    with open(logs[0]) as f:
        assert f'PretrainedInit: load from {student}' in f.read()
    # The probe's backbone after training is the exported student, bit for
    # bit: BN statistics included, which the ReKD run moved off their
    # defaults (so a backbone left at its random init cannot pass).
    probe = load_state_dict_file(osp.join(probe_dir, 'epoch_1.pth'))
    expected = _part(state, 'backbone.')
    assert any(
        k.endswith('running_mean') and v.abs().sum() > 0
        for k, v in expected.items())
    assert set(k for k in probe if k.startswith('backbone.')) == set(expected)
    for key, value in expected.items():
        assert torch.equal(probe[key], value), key


def test_export_tool_writes_both_parts_of_a_training_checkpoint(
        trained, tmp_path):
    work_dir, state = trained
    result = _run([
        EXPORT_TOOL,
        osp.join(work_dir, 'iter_2.pth'), '--out-dir',
        str(tmp_path)
    ])
    assert result.returncode == 0, result.stderr[-3000:]
    for who, prefix in (('student', 'backbone.'), ('teacher',
                                                   'teacher.backbone.')):
        path = tmp_path / f'iter_2_{who}_backbone.pth'
        assert f'{who}: {path}' in result.stdout
        ckpt = torch.load(path, weights_only=True)
        expected = _part(state, prefix)
        assert set(ckpt['state_dict']) == set(expected)
        assert all(
            torch.equal(ckpt['state_dict'][k], v) for k, v in expected.items())
        assert ckpt['meta']['source'].endswith('iter_2.pth')


def test_export_tool_fails_clearly_for_a_missing_teacher(tmp_path):
    path = str(tmp_path / 'moco.pth')
    torch.save(dict(state_dict={'backbone.w': torch.zeros(2)}), path)
    result = _run([EXPORT_TOOL, path, '--parts', 'teacher'])
    assert result.returncode != 0
    assert "no key starts with 'teacher.backbone.'" in result.stderr
    # Default parts: the student alone is exported, no error.
    result = _run([EXPORT_TOOL, path])
    assert result.returncode == 0, result.stderr[-3000:]
    assert osp.isfile(tmp_path / 'moco_student_backbone.pth')
    assert not osp.exists(tmp_path / 'moco_teacher_backbone.pth')


def test_hook_is_registered_and_rejects_a_template_without_a_slot():
    assert isinstance(
        HOOKS.build(dict(type='ExportWeightsHook')), ExportWeightsHook)
    with pytest.raises(ValueError, match='filename_tmpl'):
        ExportWeightsHook(filename_tmpl='backbone.pth')


class _Student(torch.nn.Module):

    def __init__(self):
        super().__init__()
        self.backbone = torch.nn.Linear(2, 2)


@pytest.mark.parametrize('main', [True, False])
def test_hook_writes_on_rank_0_only(tmp_path, monkeypatch, main):
    import rekd_mm.engine.hooks.export_weights_hook as module
    monkeypatch.setattr(module, 'is_main_process', lambda: main)
    runner = SimpleNamespace(
        model=_Student(), work_dir=str(tmp_path), iter=3, epoch=0)
    ExportWeightsHook().after_train(runner)
    # A model without a teacher: the student alone.
    expected = ['student_backbone.pth'] if main else []
    assert sorted(os.listdir(tmp_path)) == expected
