# Copyright (c) rekd_mm contributors. All rights reserved.
import numpy as np
from mmcv.transforms import BaseTransform
from mmpretrain.registry import TRANSFORMS


@TRANSFORMS.register_module()
class GrayToRGB(BaseTransform):
    """Repeat a single-channel image into three channels.

    mmpretrain's MNIST-family datasets yield in-memory ``(H, W)`` arrays,
    while its colour transforms and ImageNet backbones expect ``(H, W, 3)``.
    mmcv only converts colour when *loading* a file
    (``LoadImageFromFile(color_type='color')``), hence this transform.

    Required Keys: ``img``. Modified Keys: ``img``.
    """

    def transform(self, results: dict) -> dict:
        img = results['img']
        if img.ndim == 2:
            img = img[..., None]
        if img.shape[-1] == 1:
            results['img'] = np.ascontiguousarray(np.repeat(img, 3, axis=-1))
        return results
