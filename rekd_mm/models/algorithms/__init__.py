# Copyright (c) OpenMMLab. All rights reserved.
from .rekd import ReKD

__all__ = ['ReKD']
