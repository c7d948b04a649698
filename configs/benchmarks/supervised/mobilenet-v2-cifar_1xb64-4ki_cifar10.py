# Supervised reference (labels + cross-entropy) of the CIFAR-10 "small4k"
# quality regime (docs/quality.md, "Batch-statistics shortcut (session 5)"):
# the 2ki reference at the regime's budget, 4000 iterations of 64 (the cosine
# follows), same single-view pipeline as the 4ki MoCo v2 / ReKD configs. Its
# own optimiser (lr 0.06) and plain BN are kept: SplitBN removes the
# batch-statistics shortcut of the contrastive task (a positive key found
# from its batch-mates), which a supervised loss does not have, and lr 0.015
# was chosen for MoCo v2's queue (docs/quality.md, session 4).
_base_ = './mobilenet-v2-cifar_1xb64-2ki_cifar10.py'
train_cfg = dict(max_iters=4000)
