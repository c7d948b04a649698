#!/usr/bin/env bash
# Copyright (c) rekd_mm contributors. All rights reserved.
# Install everything (idempotent) and run the ReKD demo on Fashion-MNIST (CPU).
# Extra arguments go to tools/demo.py (e.g. --work-dir, --cfg-options).
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$repo_root/tools/setup_env.sh"
cd "$repo_root"
exec .venv/bin/python tools/demo.py "$@"
