# Copyright (c) rekd_mm contributors. All rights reserved.
"""An epoch, for RelationMinerHook's init_epoch and epoch-based
re-clustering, is one pass of all ranks over the data set, whatever the
sampler."""
from types import SimpleNamespace

import pytest
from mmengine.dataset import DefaultSampler, InfiniteSampler
from torch.utils.data import DataLoader

import rekd_mm  # noqa: F401
from rekd_mm.engine.hooks import relation_miner_hook
from rekd_mm.engine.hooks.relation_miner_hook import RelationMinerHook


@pytest.mark.parametrize('drop_last', [True, False])
def test__epoch_under_an_infinite_sampler_is_one_ranks_share(
        monkeypatch, drop_last):
    world_size = 4
    monkeypatch.setattr(relation_miner_hook, 'get_world_size',
                        lambda: world_size)
    monkeypatch.setattr('mmengine.dataset.sampler.get_dist_info', lambda:
                        (0, world_size))
    dataset = list(range(100))
    hook = RelationMinerHook(init_epoch=2)

    def iters(sampler):
        loader = DataLoader(
            dataset, batch_size=8, sampler=sampler, drop_last=drop_last)
        return hook._iters_per_epoch(SimpleNamespace(train_dataloader=loader))

    # DefaultSampler (epoch-based loop): 25 samples per rank.
    expected = 3 if drop_last else 4
    assert iters(DefaultSampler(dataset, shuffle=False)) == expected
    # InfiniteSampler (iteration-based loop): len() is the whole data set,
    # 4 times one rank's share.
    assert iters(InfiniteSampler(dataset, shuffle=False)) == expected
