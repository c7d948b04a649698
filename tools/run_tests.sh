#!/usr/bin/env bash
# Copyright (c) rekd_mm contributors. All rights reserved.
# Set up the environment (idempotent), run the linters and the test suite on CPU.
# Extra arguments go to pytest, e.g. `bash tools/run_tests.sh -k kmeans`.
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$repo_root/tools/setup_env.sh"
# mmdet needs mmcv with compiled ops: a second venv, .venv-det, used by
# tests/test_detection (first time on a new machine: ~20 min mmcv build).
bash "$repo_root/tools/setup_det_env.sh"
# flake8, isort, yapf (OpenMMLab's linters, requirements/lint.txt, in their
# own small venv) before the tests; REKD_SKIP_LINT=1 skips them.
if [ "${REKD_SKIP_LINT:-0}" != 1 ]; then
    bash "$repo_root/tools/lint.sh"
fi
cd "$repo_root"
# One thread per process, one pytest-xdist worker per core (REKD_TEST_WORKERS,
# default 2: these machines have 2 cores; 0 runs in this process).
export OMP_NUM_THREADS=1
exec .venv/bin/python -m pytest -q -n "${REKD_TEST_WORKERS:-2}" "$@" tests
