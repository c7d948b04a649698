#!/usr/bin/env bash
# Set up the environment (idempotent) and run the test suite on CPU.
# Extra arguments go to pytest, e.g. `bash tools/run_tests.sh -k kmeans`.
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$repo_root/tools/setup_env.sh"
# mmdet needs mmcv with compiled ops: a second venv, .venv-det, used by
# tests/test_detection (first time on a new machine: ~20 min mmcv build).
bash "$repo_root/tools/setup_det_env.sh"
cd "$repo_root"
# One thread per process: the suite runs multi-process (gloo) tests on 2 cores.
export OMP_NUM_THREADS=1
exec .venv/bin/python -m pytest -q "$@" tests
