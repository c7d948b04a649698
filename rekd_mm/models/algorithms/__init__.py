# Copyright (c) rekd_mm contributors. All rights reserved.
from .rekd import ReKD

__all__ = ['ReKD']
