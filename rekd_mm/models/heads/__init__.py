# Copyright (c) rekd_mm contributors. All rights reserved.
from .relation_contrastive_head import RelationContrastiveHead

__all__ = ['RelationContrastiveHead']
