# Copyright (c) rekd_mm contributors. All rights reserved.
from .formatting import GrayToRGB
from .loading import SafeLoadImageFromFile

__all__ = ['GrayToRGB', 'SafeLoadImageFromFile']
