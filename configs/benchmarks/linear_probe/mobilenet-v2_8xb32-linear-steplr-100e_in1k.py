# Linear probe of a ReKD MobileNetV2 student on ImageNet-1k.
_base_ = './_base_/linear-probe_8xb32-steplr-100e_in1k.py'

model = dict(
    backbone=dict(
        _delete_=True,
        type='MobileNetV2',
        widen_factor=1.0,
        frozen_stages=7,  # conv1 and layer1-7; conv2 via lr_mult=0
        norm_eval=True,
        init_cfg=dict(type='Pretrained', checkpoint='', prefix='backbone.')),
    head=dict(in_channels=1280))
