# Copyright (c) rekd_mm contributors. All rights reserved.
import pytest
import torch
from mmpretrain.models.backbones import MobileNetV2

from rekd_mm.models.backbones import MobileNetV2_CIFAR


def test__stride_one_stem_keeps_a_2x2_map_at_32px():
    x = torch.randn(2, 3, 32, 32)
    assert MobileNetV2_CIFAR()(x)[-1].shape == (2, 1280, 2, 2)
    assert MobileNetV2_CIFAR(stem_stride=2)(x)[-1].shape == (2, 1280, 1, 1)


def test__state_dict_is_mobilenet_v2s():
    # Probe and detection configs load it as a plain MobileNetV2.
    ours = MobileNetV2_CIFAR(widen_factor=0.5).state_dict()
    theirs = MobileNetV2(widen_factor=0.5).state_dict()
    assert {k: v.shape
            for k, v in ours.items()
            } == {k: v.shape
                  for k, v in theirs.items()}


def test__stride_two_is_mobilenet_v2():
    torch.manual_seed(0)
    ours = MobileNetV2_CIFAR(stem_stride=2, widen_factor=0.5)
    theirs = MobileNetV2(widen_factor=0.5)
    theirs.load_state_dict(ours.state_dict())
    # (mmpretrain's MobileNetV2.train() returns None: no chaining.)
    ours.eval()
    theirs.eval()
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(ours(x)[-1], theirs(x)[-1])


def test__bad_stem_stride_is_named():
    with pytest.raises(ValueError, match='stem_stride'):
        MobileNetV2_CIFAR(stem_stride=4)
