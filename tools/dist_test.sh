#!/usr/bin/env bash
# Copyright (c) OpenMMLab. All rights reserved.
# Derived from mmpretrain 1.2.0's tools/dist_test.sh (Apache-2.0);
# modified by rekd_mm contributors.
# Distributed testing on one or more machines with torchrun.
#
# Usage: bash tools/dist_test.sh CONFIG CHECKPOINT GPUS [test.py args...]
#   e.g. bash tools/dist_test.sh configs/benchmarks/linear_probe/CONFIG.py \
#            work_dirs/probe/epoch_100.pth 8
# Environment variables: NNODES, NODE_RANK, PORT, MASTER_ADDR (multi-node),
# PYTHON (the interpreter, default: python).
# Without CUDA the same command tests on CPU processes over gloo
# (tools/test.py sets that up).

CONFIG=$1
CHECKPOINT=$2
GPUS=$3
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
    $(dirname "$0")/test.py \
    $CONFIG \
    $CHECKPOINT \
    --launcher pytorch ${@:4}
