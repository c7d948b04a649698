# Linear probe of a ReKD MobileNetV3-Large student on ImageNet-1k: one linear
# layer on the 960-channel last stage (mmpretrain's supervised MobileNetV3
# head, a 1280-wide MLP, would not be a linear probe).
_base_ = './_base_/linear-probe_8xb32-steplr-100e_in1k.py'

model = dict(
    backbone=dict(
        _delete_=True,
        type='MobileNetV3',
        arch='large',
        frozen_stages=16,  # layer0-16, all of them
        norm_eval=True,
        init_cfg=dict(type='Pretrained', checkpoint='', prefix='backbone.')),
    head=dict(in_channels=960))
