#!/usr/bin/env bash
# Copyright (c) rekd_mm contributors. All rights reserved.
# Fine-tune a detection-transfer config (FPN) from a ReKD checkpoint with
# mmdet's own tools/train.py, in the detection venv (.venv-det).
#
# Usage: bash tools/benchmarks/mmdetection/dist_train_fpn.sh CONFIG PRETRAIN GPUS [ARGS...]
# ARGS follow `--cfg-options model.backbone.init_cfg...`, as in mmpretrain's
# mim_dist_train_fpn.sh: more KEY=VALUE items extend it, then other train.py
# options (--work-dir DIR, --amp, ...); a second --cfg-options would replace it.
#   e.g. bash tools/benchmarks/mmdetection/dist_train_fpn.sh \
#            configs/benchmarks/detection/mask-rcnn_mobilenet-v2_fpn_8xb2-1x_coco.py \
#            work_dirs/rekd/epoch_200.pth 8
# PRETRAIN is the ReKD training checkpoint (or extract_backbone.py's output):
# the student is read from its `backbone.` keys. GPUS=1 runs one process
# (also on CPU); GPUS>1 uses torchrun and needs CUDA (SyncBN; mmengine's
# pytorch launcher calls torch.cuda.set_device).
# Environment variables: NNODES, NODE_RANK, PORT, MASTER_ADDR (multi-node),
# PYTHON (default: .venv-det/bin/python).
set -euo pipefail
CONFIG=$1
PRETRAIN=$2
GPUS=$3
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
PYTHON=${PYTHON:-$repo_root/.venv-det/bin/python}
if [ ! -x "$PYTHON" ]; then
    echo "$PYTHON not found: run 'bash tools/setup_det_env.sh' first" >&2
    exit 1
fi
if [ ! -f "$PRETRAIN" ]; then
    echo "pretrained checkpoint '$PRETRAIN' not found" >&2
    exit 1
fi
MMDET_TRAIN="$("$PYTHON" -c 'import mmdet, os; print(os.path.join(os.path.dirname(mmdet.__file__), ".mim", "tools", "train.py"))')"
CFG_OPTIONS=(--cfg-options model.backbone.init_cfg.type=Pretrained
    "model.backbone.init_cfg.checkpoint=$PRETRAIN"
    model.backbone.init_cfg.prefix=backbone.)
if [ "$GPUS" -gt 1 ]; then
    "$PYTHON" -m torch.distributed.run \
        --nnodes="${NNODES:-1}" --node_rank="${NODE_RANK:-0}" \
        --master_addr="${MASTER_ADDR:-127.0.0.1}" --nproc_per_node="$GPUS" \
        --master_port="${PORT:-29500}" \
        "$MMDET_TRAIN" "$CONFIG" --launcher pytorch "${CFG_OPTIONS[@]}" "${@:4}"
else
    "$PYTHON" "$MMDET_TRAIN" "$CONFIG" "${CFG_OPTIONS[@]}" "${@:4}"
fi
