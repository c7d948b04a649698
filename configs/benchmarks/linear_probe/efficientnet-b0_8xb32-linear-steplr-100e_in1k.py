# Linear probe of a ReKD EfficientNet-B0 student on ImageNet-1k.
_base_ = './_base_/linear-probe_8xb32-steplr-100e_in1k.py'

model = dict(
    backbone=dict(
        _delete_=True,
        type='EfficientNet',
        arch='b0',
        frozen_stages=7,  # all seven layers, stem and final conv included
        norm_eval=True,
        init_cfg=dict(type='Pretrained', checkpoint='', prefix='backbone.')),
    head=dict(in_channels=1280))
