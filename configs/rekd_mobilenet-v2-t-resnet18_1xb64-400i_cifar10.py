# Demo: ReKD on CIFAR-10 folders (real colour images), CPU-friendly.
# Same model, optimiser and schedule as the Fashion-MNIST demo; the data root
# defaults to ../shared/data/cifar10 and is overridable, e.g.
#   --cfg-options train_dataloader.dataset.data_root=/path/to/cifar10
_base_ = [
    './_base_/models/rekd_mobilenet-v2-t-resnet18_32px.py',
    './_base_/cifar10_mocov2-32px.py',
]
custom_imports = dict(imports=['rekd_mm'], allow_failed_imports=False)
default_scope = 'mmpretrain'
