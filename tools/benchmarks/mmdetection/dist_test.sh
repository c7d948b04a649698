#!/usr/bin/env bash
# Copyright (c) rekd_mm contributors. All rights reserved.
# Evaluate a fine-tuned detector (COCO bbox/segm mAP, or VOC mAP) with mmdet's
# own tools/test.py, in the detection venv (.venv-det).
#
# Usage: bash tools/benchmarks/mmdetection/dist_test.sh CONFIG CHECKPOINT GPUS [ARGS...]
#   CHECKPOINT is the detector's checkpoint from dist_train_fpn.sh's work_dir.
# Environment variables: PORT, PYTHON (default: .venv-det/bin/python).
set -euo pipefail
CONFIG=$1
CHECKPOINT=$2
GPUS=$3
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
PYTHON=${PYTHON:-$repo_root/.venv-det/bin/python}
if [ ! -x "$PYTHON" ]; then
    echo "$PYTHON not found: run 'bash tools/setup_det_env.sh' first" >&2
    exit 1
fi
MMDET_TEST="$("$PYTHON" -c 'import mmdet, os; print(os.path.join(os.path.dirname(mmdet.__file__), ".mim", "tools", "test.py"))')"
# The detector checkpoint replaces every weight, so the config's Pretrained
# init is not used; StrictPretrainedCheckHook (which also runs before_run in
# testing, and would ask for that checkpoint) is switched off. ARGS extend
# this --cfg-options, then other test.py options follow.
if [ "$GPUS" -gt 1 ]; then
    "$PYTHON" -m torch.distributed.run --nproc_per_node="$GPUS" \
        --master_port="${PORT:-29500}" \
        "$MMDET_TEST" "$CONFIG" "$CHECKPOINT" --launcher pytorch --cfg-options custom_hooks=[] "${@:4}"
else
    "$PYTHON" "$MMDET_TEST" "$CONFIG" "$CHECKPOINT" --cfg-options custom_hooks=[] "${@:4}"
fi
