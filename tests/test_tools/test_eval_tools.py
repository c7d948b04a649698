# Copyright (c) rekd_mm contributors. All rights reserved.
"""End-to-end runs of tools/knn_eval.py, tools/model_converters/
extract_backbone.py and tools/analysis_tools/relation_diagnostics.py on a
tiny ReKD checkpoint."""
import json
import os
import os.path as osp
import subprocess
import sys

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmpretrain.registry import MODELS

import rekd_mm  # noqa: F401
from rekd_mm.evaluation import (build_knn_dataloader, pairwise_relation_scores,
                                run_knn_eval)
from rekd_mm.utils import PretrainedMismatchError, load_prefixed_weights
from tests.scripts import load_script
from tests.toy_configs import REPO_ROOT, toy_knn_loader_cfg, toy_model_cfg

NUM_PROTOTYPES = 6


@pytest.fixture(scope='module')
def toy(tmp_path_factory):
    """A toy ReKD config file and a checkpoint with an initialised bank."""
    root = tmp_path_factory.mktemp('eval_tools')
    init_default_scope('mmpretrain')
    model_cfg = toy_model_cfg(num_prototypes=NUM_PROTOTYPES, threshold=0.0)
    cfg = Config(
        dict(
            default_scope='mmpretrain',
            custom_imports=dict(imports=['rekd_mm']),
            model=model_cfg,
            knn_train_dataloader=toy_knn_loader_cfg('train'),
            knn_val_dataloader=toy_knn_loader_cfg('test')))
    cfg_path = str(root / 'toy_rekd.py')
    cfg.dump(cfg_path)

    torch.manual_seed(0)
    model = MODELS.build(model_cfg).eval()
    loader = build_knn_dataloader(toy_knn_loader_cfg('train'), 64, seed=1)
    embeddings = torch.cat([
        model.teacher_embed(model.data_preprocessor(data, False)['inputs'])
        for data in loader
    ])
    model.miner.initialize(embeddings, distributed=False, seed=0)
    ckpt = str(root / 'rekd.pth')
    torch.save(dict(meta=dict(iter=8), state_dict=model.state_dict()), ckpt)
    return dict(root=root, cfg=cfg_path, ckpt=ckpt, model=model)


def _run_tool(*args) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS='1')
    proc = subprocess.run([sys.executable, *args],
                          cwd=REPO_ROOT,
                          env=env,
                          capture_output=True,
                          text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _last_stage_channels(backbone) -> int:
    with torch.no_grad():
        return backbone(torch.zeros(1, 3, 16, 16))[-1].shape[1]


def test__knn_eval_cli_prints_a_table_and_writes_json(toy):
    out = str(toy['root'] / 'knn.json')
    proc = _run_tool('tools/knn_eval.py', toy['cfg'], toy['ckpt'], '--k', '10',
                     '3', '--max-train', '64', '--max-val', '32', '--out', out)
    assert 'top-1' in proc.stdout and 'top-5' in proc.stdout
    result = json.load(open(out))
    assert result['num_train'] == 64 and result['num_val'] == 32
    assert result['feat_dim'] == _last_stage_channels(toy['model'].backbone)
    # The CLI computes what the function computes.
    direct = run_knn_eval(
        toy['cfg'],
        toy['ckpt'],
        k=[10, 3],
        max_train=64,
        max_val=32,
        show_progress=False,
        verbose=False)
    for key in ('k10_top1', 'k10_top5', 'k3_top1', 'k3_top5'):
        assert result[key] == pytest.approx(direct[key])
        assert 0.0 <= result[key] <= 100.0


def test__knn_eval_scores_the_teacher_and_rejects_a_wrong_prefix(toy):
    teacher = run_knn_eval(
        toy['cfg'],
        toy['ckpt'],
        prefix='teacher.backbone.',
        k=5,
        max_train=32,
        max_val=16,
        show_progress=False,
        verbose=False)
    assert teacher['feat_dim'] == _last_stage_channels(
        toy['model'].teacher.backbone)
    with pytest.raises(PretrainedMismatchError) as err:
        run_knn_eval(
            toy['cfg'],
            toy['ckpt'],
            prefix='module.backbone.',
            show_progress=False,
            verbose=False)
    assert "'module.backbone.conv1.conv.weight'" in str(err.value)
    assert "'backbone.'" in str(err.value)


def test__extract_backbone_writes_plain_and_prefixed_state_dicts(toy):
    out = str(toy['root'] / 'student.pth')
    proc = _run_tool('tools/model_converters/extract_backbone.py', toy['ckpt'],
                     out)
    assert out in proc.stdout
    state = torch.load(out, map_location='cpu', weights_only=True)
    expected = toy['model'].backbone.state_dict()
    assert list(state) == list(expected)
    assert all(torch.equal(state[k], expected[k]) for k in expected)

    tool = load_script('tools/model_converters/extract_backbone.py')
    teacher_out = str(toy['root'] / 'teacher.pth')
    tool.extract_backbone(
        toy['ckpt'], teacher_out, prefix='teacher.backbone.', keep_prefix=True)
    # Loadable with prefix='backbone.', as mmpretrain/mmdet configs do.
    resnet = MODELS.build(toy_model_cfg()['teacher_backbone'])
    load_prefixed_weights(resnet, teacher_out, 'backbone.')
    teacher = toy['model'].teacher.backbone.state_dict()
    assert all(
        torch.equal(v, teacher[k]) for k, v in resnet.state_dict().items())
    with pytest.raises(KeyError, match="starts with 'student.'"):
        tool.extract_backbone(
            toy['ckpt'], str(toy['root'] / 'none.pth'), prefix='student.')


def test__relation_diagnostics_cli_writes_figures_and_scores(toy):
    out_dir = str(toy['root'] / 'diag')
    proc = _run_tool('tools/analysis_tools/relation_diagnostics.py',
                     toy['cfg'], toy['ckpt'], '--out-dir', out_dir,
                     '--max-samples', '48', '--rows', '3', '--cols', '4')
    assert 'relation_precision' in proc.stdout
    import matplotlib.pyplot as plt
    for name in ('prototype_grid.png', 'prototype_usage.png'):
        path = osp.join(out_dir, name)
        assert path in proc.stdout
        with open(path, 'rb') as f:
            assert f.read(8) == b'\x89PNG\r\n\x1a\n'
        assert plt.imread(path).shape[0] > 100
    result = json.load(open(osp.join(out_dir, 'relation_diagnostics.json')))
    assert result['num_samples'] == 48
    assert len(result['top_prototypes']) == min(3, result['prototypes_used'])

    # Recompute the scores: the checkpoint's teacher and bank on the same
    # seeded subset.
    model = toy['model']
    assign, labels = [], []
    for data in build_knn_dataloader(toy_knn_loader_cfg('test'), 48, seed=0):
        data = model.data_preprocessor(data, False)
        assign.append(
            model.miner.assign(model.teacher_embed(data['inputs']))[0])
        labels += [int(s.gt_label[0]) for s in data['data_samples']]
    assign = torch.cat(assign)
    expected = pairwise_relation_scores(assign, torch.tensor(labels))
    assert result['assigned_ratio'] == pytest.approx(
        float((assign >= 0).float().mean()))
    for key in ('relation_precision', 'relation_recall'):
        if np.isnan(expected[key]):
            assert result[key] is None
        else:
            assert result[key] == pytest.approx(expected[key])
