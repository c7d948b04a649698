# Copyright (c) rekd_mm contributors. All rights reserved.
import pytest
import torch
import torch.nn as nn
from mmcv.cnn import build_norm_layer
from mmengine.registry import init_default_scope

from rekd_mm.models.utils import SplitBatchNorm

init_default_scope('mmpretrain')


def _layer(num_features=3, num_splits=2, **kwargs):
    layer = SplitBatchNorm(num_features, num_splits=num_splits, **kwargs)
    if layer.affine:
        with torch.no_grad():
            layer.weight.copy_(torch.arange(1., num_features + 1))
            layer.bias.copy_(torch.linspace(-1., 1., num_features))
    return layer


def _by_hand(x, num_splits, weight, bias, eps=1e-5):
    """Each slice normalised with its own mean and biased variance."""
    out = []
    dims = [0] + list(range(2, x.dim()))
    shape = [1, -1] + [1] * (x.dim() - 2)
    for part in x.chunk(num_splits):
        mean = part.mean(dims, keepdim=True)
        var = part.var(dims, unbiased=False, keepdim=True)
        out.append((part - mean) / torch.sqrt(var + eps) * weight.view(shape) +
                   bias.view(shape))
    return torch.cat(out)


@pytest.mark.parametrize('shape', [(8, 3, 4, 4), (12, 3)])
def test__each_slice_is_normalised_with_its_own_statistics(shape):
    torch.manual_seed(0)
    x = torch.randn(*shape) * 3 + torch.arange(shape[0]).view(
        -1, *[1] * (len(shape) - 1))  # slices with different means
    layer = _layer(num_splits=2 if shape[0] == 8 else 4)
    out = layer(x)
    expected = _by_hand(x, layer.num_splits, layer.weight, layer.bias)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test__running_statistics_average_the_slices():
    torch.manual_seed(0)
    x = torch.randn(8, 3, 2, 2) + torch.arange(8.).view(8, 1, 1, 1)
    layer = _layer(num_splits=4, momentum=0.1)
    layer(x)
    slices = x.chunk(4)
    mean = torch.stack([s.mean((0, 2, 3)) for s in slices]).mean(0)
    var = torch.stack([s.var((0, 2, 3), unbiased=True)
                       for s in slices]).mean(0)
    torch.testing.assert_close(layer.running_mean, 0.1 * mean)
    torch.testing.assert_close(layer.running_var, 0.9 * 1 + 0.1 * var)
    assert layer.num_batches_tracked.item() == 1
    # The slice means average to the batch mean, the slice variances do not
    # add the spread between slices (about 5 here): split BN sees less
    # variance than BN over the whole batch.
    assert (var < x.var((0, 2, 3)) - 1).all()


def test__cumulative_average_without_momentum():
    torch.manual_seed(0)
    first, second = torch.randn(4, 3, 2, 2), torch.randn(4, 3, 2, 2) + 2
    layer = _layer(num_splits=2, momentum=None)
    layer(first)
    layer(second)

    def slice_mean(x):
        return torch.stack([s.mean((0, 2, 3)) for s in x.chunk(2)]).mean(0)

    torch.testing.assert_close(layer.running_mean,
                               (slice_mean(first) + slice_mean(second)) / 2)


def test__one_split_and_evaluation_are_batchnorm():
    torch.manual_seed(0)
    x = torch.randn(6, 3, 4, 4)
    split, plain = _layer(num_splits=1), nn.BatchNorm2d(3)
    plain.load_state_dict(split.state_dict())
    torch.testing.assert_close(split(x), plain(x))
    torch.testing.assert_close(split.running_var, plain.running_var)
    split.eval(), plain.eval()
    torch.testing.assert_close(split(x), plain(x))
    several = _layer(num_splits=3)
    several.load_state_dict(plain.state_dict())
    several.eval()
    torch.testing.assert_close(several(x), plain(x))


def test__a_sample_only_sees_its_own_slice():
    """What breaks MoCo's batch-statistics shortcut: the output of a sample
    does not change when the samples of the other slices do."""
    torch.manual_seed(0)
    x = torch.randn(8, 3, 4, 4)
    other = x.clone()
    other[4:] = torch.randn(4, 3, 4, 4) * 5
    layer = _layer(num_splits=2)
    torch.testing.assert_close(layer(x)[:4], layer(other)[:4])
    whole = _layer(num_splits=1)
    assert not torch.allclose(whole(x)[:4], whole(other)[:4])


def test__gradients_are_those_of_separate_batchnorms():
    torch.manual_seed(0)
    x = torch.randn(8, 3, 4, 4, requires_grad=True)
    layer = _layer(num_splits=2)
    (layer(x)**3).sum().backward()
    x_ref = x.detach().clone().requires_grad_(True)
    weight = layer.weight.detach().clone().requires_grad_(True)
    (_by_hand(x_ref, 2, weight, layer.bias.detach())**3).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(
        layer.weight.grad, weight.grad, atol=1e-4, rtol=1e-4)


def test__channels_last_stays_channels_last():
    x = torch.randn(8, 3, 4, 4).contiguous(memory_format=torch.channels_last)
    out = _layer(num_splits=2)(x)
    assert out.is_contiguous(memory_format=torch.channels_last)


def test__batch_not_a_multiple_of_the_splits_is_named():
    with pytest.raises(ValueError, match=r'\(6 samples.*num_splits=4'):
        _layer(num_splits=4)(torch.randn(6, 3, 2, 2))
    with pytest.raises(ValueError, match='num_splits must be a positive'):
        SplitBatchNorm(3, num_splits=0)


def test__built_from_norm_cfg_with_batchnorm_names_and_state():
    name, layer = build_norm_layer(dict(type='SplitBN', num_splits=2), 8)
    assert name == 'bn' and isinstance(layer, SplitBatchNorm)
    assert layer.num_splits == 2
    assert set(layer.state_dict()) == set(nn.BatchNorm2d(8).state_dict())
    _, no_affine = build_norm_layer(
        dict(type='SplitBN', num_splits=2, affine=False), 8)
    assert no_affine.weight is None
