# Linear probe of a ReKD ShuffleNetV2 (1.0x) student on ImageNet-1k.
_base_ = './_base_/linear-probe_8xb32-steplr-100e_in1k.py'

model = dict(
    backbone=dict(
        _delete_=True,
        type='ShuffleNetV2',
        widen_factor=1.0,
        frozen_stages=3,  # conv1 and stages 1-3; the last conv via lr_mult=0
        norm_eval=True,
        init_cfg=dict(type='Pretrained', checkpoint='', prefix='backbone.')),
    head=dict(in_channels=1024))
