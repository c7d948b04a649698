# Analysis arm (docs/quality.md, session 21), not a user config: the MoCo v2
# arm of the fashion-mnist small4k regime with torch.randperm draws of a
# sequence of its own (benchmarks/analysis_models.py; model.sequence picks
# it). Needs the repository root on PYTHONPATH.
_base_ = '../../configs/mocov2_mobilenet-v2-cifar_1xb64-4ki_fashion-mnist.py'
custom_imports = dict(
    imports=['rekd_mm', 'benchmarks.analysis_models'],
    allow_failed_imports=False)
model = dict(type='MoCoSeededRandperm')
