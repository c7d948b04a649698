# Copyright (c) OpenMMLab. All rights reserved.
from .formatting import GrayToRGB

__all__ = ['GrayToRGB']
