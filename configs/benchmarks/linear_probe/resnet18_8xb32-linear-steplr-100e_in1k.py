# Linear probe of a ReKD ResNet-18 student on ImageNet-1k.
_base_ = './_base_/linear-probe_8xb32-steplr-100e_in1k.py'

model = dict(
    backbone=dict(
        _delete_=True,
        type='ResNet',
        depth=18,
        norm_cfg=dict(type='BN'),
        frozen_stages=4,  # the stem and all four stages
        norm_eval=True,
        init_cfg=dict(type='Pretrained', checkpoint='', prefix='backbone.')),
    head=dict(in_channels=512))
