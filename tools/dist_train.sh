#!/usr/bin/env bash
# Copyright (c) OpenMMLab. All rights reserved.
# Derived from mmpretrain 1.2.0's tools/dist_train.sh (Apache-2.0);
# modified by rekd_mm contributors.
# Distributed training on one or more machines with torchrun.
#
# Usage: bash tools/dist_train.sh CONFIG GPUS [train.py args...]
#   e.g. bash tools/dist_train.sh configs/rekd_mbv2_r50_200e.py 8 --amp
# Environment variables: NNODES, NODE_RANK, PORT, MASTER_ADDR (multi-node),
# PYTHON (the interpreter, default: python).
# Without CUDA the same command trains on CPU processes over gloo
# (tools/train.py sets that up), which is for testing, not for speed.

CONFIG=$1
GPUS=$2
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
PORT=${PORT:-29500}
MASTER_ADDR=${MASTER_ADDR:-"127.0.0.1"}

PYTHONPATH="$(dirname $0)/..":$PYTHONPATH \
${PYTHON:-python} -m torch.distributed.run \
    --nnodes=$NNODES \
    --node_rank=$NODE_RANK \
    --master_addr=$MASTER_ADDR \
    --nproc_per_node=$GPUS \
    --master_port=$PORT \
    $(dirname "$0")/train.py \
    $CONFIG \
    --launcher pytorch ${@:3}
