# Copyright (c) rekd_mm contributors. All rights reserved.
from mmpretrain.models.backbones import MobileNetV2
from mmpretrain.registry import MODELS


@MODELS.register_module()
class MobileNetV2_CIFAR(MobileNetV2):
    """MobileNetV2 for small images.

    mmpretrain's ``MobileNetV2`` downsamples 32 times, so a 32 px image leaves
    a 1 x 1 map after the last stage. CIFAR re-implementations keep the stem
    convolution at stride 1 instead (as mmpretrain's ``ResNet_CIFAR`` does for
    ResNet); with ``stem_stride=1`` the last stage sees 2 x 2 at 32 px. The
    layers, channels and state-dict keys are those of ``MobileNetV2``, so
    every mmpretrain/mmdet config that loads a ``MobileNetV2`` loads this one.

    Measured on this project's CPUs (docs/quality.md, "Regime"): the 1 x 1
    map caps what any pretraining can reach at 32 px.

    Args:
        stem_stride (int): Stride of the stem convolution: 1 (small images)
            or 2 (``MobileNetV2``). Defaults to 1.
        **kwargs: Arguments of ``MobileNetV2``.
    """

    def __init__(self, stem_stride: int = 1, **kwargs) -> None:
        if stem_stride not in (1, 2):
            raise ValueError('model.backbone.stem_stride must be 1 or 2, '
                             f'got {stem_stride!r}')
        super().__init__(**kwargs)
        # Only the stride changes: weights, padding and output channels are
        # those of the parent's stem, so its state dict is unchanged.
        self.conv1.conv.stride = (stem_stride, stem_stride)
        self.stem_stride = stem_stride
