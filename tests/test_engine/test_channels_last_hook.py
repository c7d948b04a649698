# Copyright (c) rekd_mm contributors. All rights reserved.
from types import SimpleNamespace

import torch
import torch.nn as nn

from rekd_mm.engine.hooks import ChannelsLastHook


def test__weights_become_channels_last_in_place():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    weight = model[0].weight
    x = torch.randn(2, 3, 8, 8)
    before = model(x).detach()

    ChannelsLastHook().before_train(SimpleNamespace(model=model))

    assert model[0].weight.is_contiguous(memory_format=torch.channels_last)
    # Same Parameter object: the optimizer built before the hook still
    # updates the model's weight.
    assert model[0].weight is weight
    assert optimizer.param_groups[0]['params'][0] is weight
    out = model(x)
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out.detach(), before, rtol=1e-5, atol=1e-5)
