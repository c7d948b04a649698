# Copyright (c) rekd_mm contributors. All rights reserved.
"""Checkpoints given as URLs never run code (issue #9, items 1, 6 and 7).

A malicious pickle (it creates a directory when unpickled) is served from a
local ``http.server`` on 127.0.0.1; every entry point that accepts a
checkpoint is pointed at it. The directory must never appear and the error
must name the URL. The server runs in a daemon thread and is shut down by
the fixture.
"""
import functools
import http.server
import os
import os.path as osp
import pickle
import subprocess
import sys
import threading

import pytest
import torch
from mmengine.config import Config
from mmengine.logging import HistoryBuffer
from mmengine.runner import Runner
from mmengine.runner import checkpoint as mm_ckpt
from mmengine.runner.checkpoint import CheckpointLoader
from mmpretrain.registry import MODELS

import rekd_mm  # noqa: F401  (safe loaders, safe globals)
from rekd_mm.evaluation import run_knn_eval, run_relation_diagnostics
from rekd_mm.utils import CheckpointLoadError, load_state_dict_file
from tests.toy_configs import (REPO_ROOT, toy_knn_loader_cfg, toy_model_cfg,
                               toy_runner_cfg)


class _MkdirOnLoad:
    """Creates ``path`` when unpickled without protection."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return os.mkdir, (self.path, )


class _Quiet(http.server.SimpleHTTPRequestHandler):

    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path, monkeypatch):
    """Serve ``tmp_path/www`` on 127.0.0.1 (a free port); downloads go to a
    private torch hub cache. Yields ``(url_of(name), www, marker)``."""
    www = tmp_path / 'www'
    www.mkdir()
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch_home'))
    marker = str(tmp_path / 'PWNED')
    httpd = http.server.ThreadingHTTPServer(
        ('127.0.0.1', 0), functools.partial(_Quiet, directory=str(www)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    port = httpd.server_address[1]
    try:
        yield (lambda name: f'http://127.0.0.1:{port}/{name}'), www, marker
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def _serve_evil(www, marker, name='evil.pth'):
    """A valid-looking ReKD checkpoint with the payload in its meta."""
    state = MODELS.build(toy_model_cfg()).state_dict()
    torch.save(
        dict(state_dict=state, meta=dict(payload=_MkdirOnLoad(marker))),
        str(www / name))


def _armed(www, marker):
    """The payload does work when loaded the way mmengine 0.10.7 loads
    URLs (``weights_only=False``)."""
    probe = marker + '.probe'
    torch.save(dict(meta=_MkdirOnLoad(probe)), str(www / 'probe.pth'))
    torch.load(str(www / 'probe.pth'), weights_only=False)
    assert osp.isdir(probe)


def _assert_refused(excinfo, url, marker):
    assert url in str(excinfo.value)
    assert 'weights_only=True' in str(excinfo.value)
    assert not osp.exists(marker)


def test_url_loaders_are_registered_for_every_remote_scheme():
    for scheme in ('http://x/a.pth', 'https://x/a.pth', 'torchvision://r',
                   'modelzoo://r', 'open-mmlab://r', 'openmmlab://r',
                   'mmcls://r', 'a/local.pth'):
        loader = CheckpointLoader._get_checkpoint_loader(scheme)
        assert loader.__module__ == 'rekd_mm.utils.safe_loaders', scheme


def test_malicious_url_is_refused_by_load_checkpoint_and_state_dict_file(
        server):
    url_of, www, marker = server
    _armed(www, marker)
    _serve_evil(www, marker)
    url = url_of('evil.pth')
    with pytest.raises(CheckpointLoadError) as err:
        CheckpointLoader.load_checkpoint(url, map_location='cpu')
    _assert_refused(err, url, marker)
    with pytest.raises(RuntimeError) as err:
        load_state_dict_file(url)
    _assert_refused(err, url, marker)


def test_malicious_torchvision_name_is_refused(server, monkeypatch):
    url_of, www, marker = server
    _serve_evil(www, marker)
    url = url_of('evil.pth')
    # torchvision:// and open-mmlab:// resolve names to URLs.
    monkeypatch.setattr(mm_ckpt, 'get_torchvision_models',
                        lambda: dict(evil=url))
    monkeypatch.setattr(mm_ckpt, 'get_external_models', lambda: dict(evil=url))
    for name in ('torchvision://evil', 'open-mmlab://evil'):
        with pytest.raises(CheckpointLoadError) as err:
            CheckpointLoader.load_checkpoint(name)
        _assert_refused(err, url, marker)


def test_good_url_checkpoint_loads(server):
    url_of, www, _ = server
    state = {'backbone.w': torch.arange(3.)}
    torch.save(dict(state_dict=state, meta=dict(iter=1)), str(www / 'ok.pth'))
    loaded = load_state_dict_file(url_of('ok.pth'))
    assert torch.equal(loaded['backbone.w'], state['backbone.w'])


@pytest.mark.parametrize(
    'entry', ['load_from', 'resume', 'init_cfg', 'teacher_pretrained'])
def test_malicious_url_never_runs_in_training(server, tmp_path, entry):
    url_of, www, marker = server
    _serve_evil(www, marker)
    url = url_of('evil.pth')
    model = toy_model_cfg()
    kwargs = {}
    if entry == 'load_from':
        kwargs = dict(load_from=url)
    elif entry == 'resume':
        kwargs = dict(load_from=url, resume=True)
    elif entry == 'init_cfg':
        model['backbone']['init_cfg'] = dict(
            type='Pretrained', checkpoint=url, prefix='backbone.')
    else:
        model['teacher_pretrained'] = dict(checkpoint=url, prefix='teacher.')
    runner = Runner.from_cfg(
        Config(
            toy_runner_cfg(
                str(tmp_path / 'work'),
                max_iters=2,
                model=model,
                miner_hook=dict(init_iter=1, source='queue'),
                **kwargs)))
    with pytest.raises(pickle.UnpicklingError) as err:
        runner.train()
    _assert_refused(err, url, marker)
    assert runner.iter == 0


@pytest.fixture
def toy_cfg_file(tmp_path):
    cfg = Config(
        dict(
            default_scope='mmpretrain',
            custom_imports=dict(imports=['rekd_mm']),
            model=toy_model_cfg(),
            knn_train_dataloader=toy_knn_loader_cfg('train', 32),
            knn_val_dataloader=toy_knn_loader_cfg('test', 16)))
    path = str(tmp_path / 'toy.py')
    cfg.dump(path)
    return path


def test_malicious_url_never_runs_in_knn_eval_and_diagnostics(
        server, tmp_path, toy_cfg_file):
    url_of, www, marker = server
    _serve_evil(www, marker)
    url = url_of('evil.pth')
    with pytest.raises(RuntimeError) as err:
        run_knn_eval(toy_cfg_file, url, show_progress=False, verbose=False)
    _assert_refused(err, url, marker)
    out_dir = str(tmp_path / 'diag')
    with pytest.raises(RuntimeError) as err:
        run_relation_diagnostics(
            toy_cfg_file, url, out_dir, show_progress=False)
    _assert_refused(err, url, marker)
    assert not osp.exists(osp.join(out_dir, 'relation_diagnostics.json'))


@pytest.mark.parametrize('tool', ['extract_backbone', 'knn_eval'])
def test_malicious_url_never_runs_in_the_tools(server, tmp_path, tool,
                                               toy_cfg_file):
    url_of, www, marker = server
    _serve_evil(www, marker)
    url = url_of('evil.pth')
    out = str(tmp_path / 'out.pth')
    if tool == 'extract_backbone':
        args = ['tools/model_converters/extract_backbone.py', url, out]
    else:
        args = ['tools/knn_eval.py', toy_cfg_file, url]
    proc = subprocess.run([sys.executable, *args],
                          cwd=REPO_ROOT,
                          env=dict(os.environ, OMP_NUM_THREADS='1'),
                          capture_output=True,
                          text=True,
                          timeout=120)
    assert proc.returncode != 0
    assert url in proc.stderr and 'weights_only=True' in proc.stderr
    assert not osp.exists(marker) and not osp.exists(out)


def test_crafted_history_buffer_cannot_rewrite_the_statistics_registry(
        tmp_path, monkeypatch):
    """A HistoryBuffer whose pickled registry maps 'mean' to
    HistoryBuffer.max (both reachable through the allow-listed getattr)
    would rebind 'mean' for every HistoryBuffer of the process."""
    path = str(tmp_path / 'registry.pth')
    with monkeypatch.context() as patch:
        # What a crafted file holds (the stock __getstate__ always writes
        # the current registry).
        patch.setattr(
            HistoryBuffer, '__getstate__', lambda self: dict(
                self.__dict__, statistics_methods=dict(mean=HistoryBuffer.max))
        )
        torch.save(
            dict(
                message_hub=dict(
                    log_scalars=dict(loss=HistoryBuffer([1.0, 3.0], [1, 1])))),
            path)
    before = dict(HistoryBuffer._statistics_methods)
    # mmengine's own __setstate__ (a weights_only=False load) would rebind:
    # the file is armed.
    with monkeypatch.context() as patch:
        patch.setattr(HistoryBuffer, '_statistics_methods', dict(before))
        torch.load(path, weights_only=False)
        assert HistoryBuffer([1.0, 3.0], [1, 1]).statistics('mean') == 3.0
    with pytest.raises(pickle.UnpicklingError, match="statistic 'mean'"):
        torch.load(path)
    with pytest.raises(CheckpointLoadError) as err:
        load_state_dict_file(path)
    assert path in str(err.value)
    assert HistoryBuffer._statistics_methods == before
    assert HistoryBuffer([1.0, 3.0], [1, 1]).statistics('mean') == 2.0

    # Extra attributes are refused too; a stock buffer loads as a plain
    # HistoryBuffer.
    odd = HistoryBuffer([1.0], [1])
    odd.__dict__['statistics'] = 1.0
    torch.save(dict(b=odd), path)
    with pytest.raises(pickle.UnpicklingError, match='unknown attributes'):
        torch.load(path)
    torch.save(dict(b=HistoryBuffer([1.0, 3.0], [1, 1])), path)
    loaded = torch.load(path)['b']
    assert type(loaded) is HistoryBuffer
    assert loaded.mean() == 2.0 and loaded.statistics('max') == 3.0


@pytest.mark.parametrize('content', [b'', b'not a checkpoint\n', 'truncated'])
def test_broken_checkpoint_file_is_named(tmp_path, content):
    path = str(tmp_path / 'broken.pth')
    if content == 'truncated':
        good = str(tmp_path / 'good.pth')
        torch.save(dict(state_dict={'w': torch.zeros(1000)}), good)
        content = open(good, 'rb').read()[:600]
    with open(path, 'wb') as f:
        f.write(content)
    with pytest.raises(CheckpointLoadError) as err:
        CheckpointLoader.load_checkpoint(path)
    assert path in str(err.value)
    with pytest.raises(FileNotFoundError, match='nope.pth'):
        CheckpointLoader.load_checkpoint(str(tmp_path / 'nope.pth'))
