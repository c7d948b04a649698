# Copyright (c) rekd_mm contributors. All rights reserved.
"""Smoke tests of benchmarks/kmeans_scale.py (not timed)."""
import json
import os.path as osp

import pytest
import torch

from tests.scripts import load_script
from tests.toy_configs import REPO_ROOT


@pytest.fixture(scope='module')
def kmeans_scale():
    path = osp.join(REPO_ROOT, 'benchmarks', 'kmeans_scale.py')
    return load_script(path)


def test__synthetic_embeddings_are_unit_seeded_and_clustered(kmeans_scale):
    emb = kmeans_scale.make_embeddings(2000, 32, 5, seed=3)
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(2000))
    assert torch.equal(emb, kmeans_scale.make_embeddings(2000, 32, 5, seed=3))
    # Noise of the centre's norm: cosine to the centre about 1/sqrt(2),
    # far above the ~0 of two random directions in 32-d.
    _, info = kmeans_scale.spherical_kmeans(
        emb, 5, num_iters=10, distributed=False)
    assert info['objective'] > 0.6


def test__ours_scores_in_bounded_chunks(kmeans_scale):
    """The E-step never holds the N x K score matrix: the peak RSS of a run
    stays far below it (152 MiB here)."""
    emb = kmeans_scale.make_embeddings(20000, 128, 50, seed=0)
    run = kmeans_scale.run_ours(emb, 2000, iters=1, seed=0, chunk_size=65536)
    nxk_mib = 20000 * 2000 * 4 / 2**20
    assert run['peak_extra_rss_mib'] is not None
    assert run['peak_extra_rss_mib'] < nxk_mib / 2


def test__kmeans_scale_runs_and_writes_valid_json(kmeans_scale, tmp_path):
    out = str(tmp_path / 'kmeans.json')
    kmeans_scale.main([
        '--n', '600', '--k', '8', '1000', '--iters', '2', '--repeats', '2',
        '--true-clusters', '8', '--faiss', 'off', '--kmeanspp', '--out', out
    ])
    with open(out) as f:
        results = json.load(f)
    # K=1000 > N=600 is skipped, not crashed on.
    assert [(r['n'], r['k']) for r in results['rows']] == [(600, 8)]
    row = results['rows'][0]
    assert row['faiss'] is None
    assert row['ours']['repeats'] == 2
    assert row['ours']['seconds_per_iter'] > 0
    assert 0.5 < row['ours']['objective'] <= 1.0
    assert row['kmeanspp_seeding_seconds'] > 0
    assert results['settings']['iters'] == 2
    assert results['machine']['torch_threads'] >= 1
    with open(osp.splitext(out)[0] + '.md') as f:
        assert '| 600 | 8 |' in f.read()
