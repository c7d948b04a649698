# mmdet's runtime plus what every ReKD detection-transfer config needs.
#
# These configs run in the detection venv (`bash tools/setup_det_env.sh`,
# mmcv with compiled ops + mmdet 3.3.0), never in the main one.
_base_ = 'mmdet::_base_/default_runtime.py'

# mmpretrain.models: the students' backbones (`mmpretrain.MobileNetV2`,
# `mmpretrain.ResNet`) live in mmpretrain's registry, not mmdet's.
# rekd_mm: allow-lists the globals of an mmengine training checkpoint for
# torch.load(weights_only=True), so `init_cfg.checkpoint` may be the ReKD
# training checkpoint itself (or tools/model_converters/extract_backbone.py's
# output), and registers StrictPretrainedCheckHook.
custom_imports = dict(
    imports=['mmpretrain.models', 'rekd_mm'], allow_failed_imports=False)

# A Pretrained init whose prefix matches nothing only warns in mmengine and
# the detector then fine-tunes a random backbone: fail before training
# instead, and check after init that the backbone holds the checkpoint.
custom_hooks = [
    dict(type='mmpretrain.StrictPretrainedCheckHook', modules=['backbone'])
]
