# Copyright (c) OpenMMLab. All rights reserved.
from .formatting import GrayToRGB
from .loading import SafeLoadImageFromFile

__all__ = ['GrayToRGB', 'SafeLoadImageFromFile']
