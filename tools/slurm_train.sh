#!/usr/bin/env bash
# Copyright (c) OpenMMLab. All rights reserved.
# Derived from mmpretrain 1.2.0's tools/slurm_train.sh (Apache-2.0);
# modified by rekd_mm contributors.
# Distributed training under Slurm (one task per GPU).
#
# Usage: bash tools/slurm_train.sh PARTITION JOB_NAME CONFIG [train.py args...]
#   e.g. GPUS=16 bash tools/slurm_train.sh dev rekd configs/rekd_mbv2_r50_200e.py \
#            --work-dir work_dirs/rekd_mbv2_r50_200e
# Environment variables: GPUS (8), GPUS_PER_NODE (8), CPUS_PER_TASK (5),
# SRUN_ARGS (extra srun arguments), PYTHON (default: python).

set -x

PARTITION=$1
JOB_NAME=$2
CONFIG=$3
GPUS=${GPUS:-8}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
CPUS_PER_TASK=${CPUS_PER_TASK:-5}
SRUN_ARGS=${SRUN_ARGS:-""}
PY_ARGS=${@:4}

PYTHONPATH="$(dirname $0)/..":$PYTHONPATH \
srun -p ${PARTITION} \
    --job-name=${JOB_NAME} \
    --gres=gpu:${GPUS_PER_NODE} \
    --ntasks=${GPUS} \
    --ntasks-per-node=${GPUS_PER_NODE} \
    --cpus-per-task=${CPUS_PER_TASK} \
    --kill-on-bad-exit=1 \
    ${SRUN_ARGS} \
    ${PYTHON:-python} -u $(dirname "$0")/train.py ${CONFIG} --launcher="slurm" ${PY_ARGS}
