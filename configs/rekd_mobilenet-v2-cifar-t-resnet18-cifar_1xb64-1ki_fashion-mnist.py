# The CPU demo (tools/demo.py): the small4k regime's ReKD on fashion-mnist
# (split BN, lr 0.015, crops (0.5, 1), response KD; docs/quality.md) cut to
# 1000 iterations of 64, the cosine ending there. MobileNetV2 (stride-1 stem)
# student, half-width ResNet-18 (CIFAR stem) online teacher, 32 px. Measured
# (regime search, seed 0, subset kNN): the student ends above its own
# initialisation, where the 400-iteration demo of session 2 ended below it.
_base_ = ('./rekd_mobilenet-v2-cifar-t-resnet18-cifar_'
          '1xb64-4ki_fashion-mnist.py')
train_cfg = dict(max_iters=1000)
