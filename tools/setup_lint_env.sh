#!/usr/bin/env bash
# Copyright (c) rekd_mm contributors. All rights reserved.
# Create (or reuse) the linters' virtual environment: requirements/lint.txt
# (flake8, isort, yapf at mmpretrain's versions, and pre-commit), a few MB,
# separate from the torch venv of tools/setup_env.sh.
#
# Like that venv it lives outside the clone, keyed by the hash of
# requirements/lint.txt; `.venv-lint` in the repository root is a symlink to
# it. Usage: `bash tools/setup_lint_env.sh` (tools/lint.sh calls it).
#
# Environment variables:
#   REKD_CACHE   where venvs are kept (default: ~/.cache/rekd_mm)
#   PYTHON       the interpreter to build the venv with (default: python3.11 or python3)
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache_root="${REKD_CACHE:-$HOME/.cache/rekd_mm}"
python_bin="${PYTHON:-$(command -v python3.11 || command -v python3)}"

req_hash="$(sha256sum < "$repo_root/requirements/lint.txt" | cut -c1-12)"
venv_dir="$cache_root/venv-lint-$req_hash"

if [ ! -f "$venv_dir/.complete" ]; then
    echo "[setup-lint] building venv $venv_dir with $python_bin"
    rm -rf "$venv_dir"
    mkdir -p "$cache_root"
    "$python_bin" -m venv "$venv_dir"
    "$venv_dir/bin/python" -m pip install -q --upgrade "pip<26"
    "$venv_dir/bin/python" -m pip install -q -r "$repo_root/requirements/lint.txt"
    touch "$venv_dir/.complete"
fi

ln -sfn "$venv_dir" "$repo_root/.venv-lint"
echo "[setup-lint] linters ready: $repo_root/.venv-lint -> $venv_dir"
