# Copyright (c) rekd_mm contributors. All rights reserved.
"""Tools never destroy their input (issue #9, items 5 and 6).

Outputs are checked before any checkpoint or data set is read: never the
input, never an existing file without ``--force``, a writable folder; they
are written atomically. Tool arguments are checked before compute, with an
error naming the option.
"""
import hashlib
import os
import subprocess
import sys

import pytest
import torch
from mmengine.config import Config

import rekd_mm  # noqa: F401
from rekd_mm.evaluation import run_knn_eval, run_relation_diagnostics
from rekd_mm.utils import outputs
from rekd_mm.utils.outputs import OutputPathError
from tests.scripts import load_script
from tests.toy_configs import REPO_ROOT, toy_knn_loader_cfg, toy_model_cfg

EXTRACT = 'tools/model_converters/extract_backbone.py'


def _digest(path):
    with open(path, 'rb') as f:
        return hashlib.sha256(f.read()).hexdigest()


@pytest.fixture
def ckpt(tmp_path):
    path = str(tmp_path / 'iter_4.pth')
    state = {
        'backbone.conv.weight': torch.arange(6.).reshape(2, 3),
        'teacher.backbone.conv.weight': torch.ones(3),
        'queue': torch.zeros(2, 4)
    }
    torch.save(dict(state_dict=state, meta=dict(iter=4)), path)
    return path


class _NoRead:
    """Fails the test if the tool reads the checkpoint."""

    def __call__(self, *args, **kwargs):
        raise AssertionError('the checkpoint was read before the output '
                             'was checked')


def test_extract_backbone_cli_refuses_to_overwrite_its_input(ckpt):
    before = _digest(ckpt)
    proc = subprocess.run([sys.executable, EXTRACT, ckpt, ckpt, '--force'],
                          cwd=REPO_ROOT,
                          env=dict(os.environ, OMP_NUM_THREADS='1'),
                          capture_output=True,
                          text=True,
                          timeout=120)
    assert proc.returncode != 0
    assert f'out={ckpt!r} is the input' in proc.stderr
    assert _digest(ckpt) == before


def test_extract_backbone_checks_the_output_before_reading(
        ckpt, tmp_path, monkeypatch):
    tool = load_script(EXTRACT)
    monkeypatch.setattr(tool, 'load_state_dict_file', _NoRead())
    # The same file through another path (a symlink).
    link = str(tmp_path / 'link.pth')
    os.symlink(ckpt, link)
    with pytest.raises(OutputPathError, match='is the input'):
        tool.extract_backbone(ckpt, link, force=True)
    existing = str(tmp_path / 'student.pth')
    open(existing, 'wb').write(b'earlier result')
    with pytest.raises(OutputPathError, match='already exists; pass --force'):
        tool.extract_backbone(ckpt, existing)
    assert open(existing, 'rb').read() == b'earlier result'
    blocker = tmp_path / 'a_file'
    blocker.write_text('x')
    with pytest.raises(OutputPathError, match='is a file'):
        tool.extract_backbone(ckpt, str(blocker / 'sub' / 'out.pth'))
    with pytest.raises(OutputPathError, match='is a folder'):
        tool.extract_backbone(ckpt, str(tmp_path))


def test_extract_backbone_force_replaces_atomically(ckpt, tmp_path,
                                                    monkeypatch):
    tool = load_script(EXTRACT)
    out = str(tmp_path / 'student.pth')
    open(out, 'wb').write(b'earlier result')
    # A failure while writing leaves the earlier file and no temporary one.
    real_replace = os.replace

    def failing_replace(src, dst):
        raise OSError(28, 'No space left on device')

    monkeypatch.setattr(outputs.os, 'replace', failing_replace)
    with pytest.raises(OSError, match='No space left'):
        tool.extract_backbone(ckpt, out, force=True)
    assert open(out, 'rb').read() == b'earlier result'
    assert sorted(os.listdir(tmp_path)) == ['iter_4.pth', 'student.pth']
    monkeypatch.setattr(outputs.os, 'replace', real_replace)
    tool.extract_backbone(ckpt, out, force=True)
    state = torch.load(out)
    assert list(state) == ['conv.weight']


@pytest.fixture
def toy_cfg(tmp_path):
    cfg = Config(
        dict(
            default_scope='mmpretrain',
            custom_imports=dict(imports=['rekd_mm']),
            model=toy_model_cfg(),
            knn_train_dataloader=toy_knn_loader_cfg('train', 16),
            knn_val_dataloader=toy_knn_loader_cfg('test', 16)))
    path = str(tmp_path / 'toy.py')
    cfg.dump(path)
    return path


def test_knn_eval_checks_out_and_arguments_before_compute(
        ckpt, tmp_path, toy_cfg, monkeypatch):
    from rekd_mm.evaluation import knn_eval
    monkeypatch.setattr(knn_eval, 'load_prefixed_weights', _NoRead())
    out = str(tmp_path / 'knn.json')
    open(out, 'w').write('{}')
    with pytest.raises(OutputPathError, match='knn.json.*already exists'):
        run_knn_eval(toy_cfg, ckpt, out=out)
    with pytest.raises(OutputPathError, match='is the input'):
        run_knn_eval(toy_cfg, ckpt, out=ckpt, force=True)
    with pytest.raises(OutputPathError, match='is the input'):
        run_knn_eval(toy_cfg, ckpt, out=toy_cfg, force=True)
    for kwargs, match in ((dict(k=0), '--k must be positive'),
                          (dict(k=[20, -1]), '--k must be positive'),
                          (dict(temperature=0.0), '--temperature must be'),
                          (dict(max_train=0), '--max-train must be'),
                          (dict(max_val=-3), '--max-val must be')):
        with pytest.raises(ValueError, match=match):
            run_knn_eval(toy_cfg, ckpt, **kwargs)
    assert open(out).read() == '{}'


def test_relation_diagnostics_checks_out_dir_and_arguments_first(
        ckpt, tmp_path, toy_cfg, monkeypatch):
    from rekd_mm.evaluation import relation_diagnostics
    monkeypatch.setattr(relation_diagnostics, 'load_rekd_model', _NoRead())
    out_dir = tmp_path / 'diag'
    out_dir.mkdir()
    (out_dir / 'relation_diagnostics.json').write_text('{"earlier": 1}')
    with pytest.raises(OutputPathError, match='already holds'):
        run_relation_diagnostics(toy_cfg, ckpt, str(out_dir))
    with pytest.raises(OutputPathError, match='exists and is not a folder'):
        run_relation_diagnostics(toy_cfg, ckpt, ckpt)
    for kwargs, match in ((dict(rows=0), '--rows must be'), (dict(cols=-1),
                                                             '--cols must be'),
                          (dict(max_samples=0), '--max-samples must be')):
        with pytest.raises(ValueError, match=match):
            run_relation_diagnostics(toy_cfg, ckpt, str(tmp_path / 'fresh'),
                                     **kwargs)
    assert (out_dir / 'relation_diagnostics.json').read_text() == \
        '{"earlier": 1}'
    assert not (tmp_path / 'fresh').exists()
