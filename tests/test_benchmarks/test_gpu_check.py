# Copyright (c) rekd_mm contributors. All rights reserved.
"""The GPU check runs end to end at tiny shapes on CPU (``--smoke``) with
the ImageNet config, and reports every number it promises."""
import json
import os.path as osp

import pytest

from tests.scripts import load_script
from tests.toy_configs import REPO_ROOT


@pytest.fixture(scope='module')
def gpu_check():
    path = osp.join(REPO_ROOT, 'benchmarks', 'gpu_check.py')
    return load_script(path)


def test__gpu_check_smoke_runs_on_cpu_and_writes_results(gpu_check, tmp_path):
    out = str(tmp_path / 'gpu_check.json')
    gpu_check.main(['--smoke', '--device', 'cpu', '--out', out])
    with open(out) as f:
        results = json.load(f)
    assert results['config'].endswith('rekd_mbv2_r50_200e.py')
    settings = results['settings']
    assert settings['smoke'] and settings['device'] == 'cpu'
    assert settings['batch_size'] == 4 and settings['queue_len'] == 64
    for name in ('moco_student', 'moco_teacher', 'rekd'):
        variant = results['variants'][name]
        assert len(variant['step_seconds']) == 2
        assert variant['mean_step_seconds'] > 0
        assert variant['memory']['peak_rss_mib'] > 0
    summary = results['summary']
    for key in ('rekd_over_student_plus_teacher',
                'mining_plus_bank_update_share'):
        assert 0 < summary[key] < float('inf')
    # The step's one host read, counted as it would be on CUDA.
    assert results['host_syncs']['loss'] == 1
    assert summary['met']['host_syncs_per_rekd_loss']
    shares = results['breakdown']['groups_share']
    assert sum(shares.values()) == pytest.approx(1.0)
    with open(osp.splitext(out)[0] + '.md') as f:
        text = f.read()
    assert 'host_syncs_per_rekd_loss' in text and 'SMOKE' in text
