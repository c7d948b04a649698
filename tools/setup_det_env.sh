#!/usr/bin/env bash
# Copyright (c) rekd_mm contributors. All rights reserved.
# Create (or reuse) the SECOND virtual environment, for detection transfer with mmdet 3.3.0.
#
# The main venv (tools/setup_env.sh) carries mmcv-lite, which has no compiled ops; mmdet needs
# mmcv with them, and the two must never share a venv. This one has the same pinned stack
# (requirements/runtime.txt) with mmcv 2.1.0 from the wheel cached by tools/build_mmcv.sh (built
# here if missing, ~20 min on 2 cores), plus requirements/mmdet.txt, with every pin of
# runtime.txt as a constraint so that mmdet's dependencies cannot replace torch or numpy.
# It lives outside the clone, keyed by the hash of the requirements; `.venv-det` in the
# repository root is a thin venv over it that adds this clone (tools/make_clone_venv.sh).
# Usage: `bash tools/setup_det_env.sh`.
#
# Environment variables:
#   REKD_CACHE   where venvs and the mmcv wheel are kept (default: ~/.cache/rekd_mm)
#   PYTHON       the interpreter to build the venv with (default: python3.11 or python3)
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache_root="${REKD_CACHE:-$HOME/.cache/rekd_mm}"
python_bin="${PYTHON:-$(command -v python3.11 || command -v python3)}"

req_hash="$(cat "$repo_root"/requirements/runtime.txt "$repo_root"/requirements/tests.txt \
    "$repo_root"/requirements/mmdet.txt "$repo_root"/setup.cfg | sha256sum | cut -c1-12)"
venv_dir="$cache_root/venv-det-$req_hash"
vpy="$venv_dir/bin/python"

if [ ! -f "$venv_dir/.complete" ]; then
    echo "[setup-det] building venv $venv_dir with $python_bin (first time: a few minutes)"
    rm -rf "$venv_dir"
    mkdir -p "$cache_root"
    "$python_bin" -m venv "$venv_dir"
    "$vpy" -m pip install -q --upgrade "pip<26" wheel
    # runtime.txt without mmcv-lite: its pins, as requirements and as constraints.
    constraints="$venv_dir/constraints.txt"
    grep -v '^mmcv-lite' "$repo_root/requirements/runtime.txt" > "$constraints"
    "$vpy" -m pip install -q -r "$constraints" -r "$repo_root/requirements/tests.txt"
    # mmcv with ops: built against this venv's torch (build_mmcv.sh reuses a cached wheel).
    mmcv_wheel="$(bash "$repo_root/tools/build_mmcv.sh" "$vpy" | tail -1)"
    "$vpy" -m pip install -q -c "$constraints" "$mmcv_wheel"
    echo "mmcv==2.1.0" >> "$constraints"
    "$vpy" -m pip install -q -c "$constraints" -r "$repo_root/requirements/mmdet.txt"
    # Guard the invariants a silent resolver change would break.
    "$vpy" - <<'PY'
import importlib.metadata as md
assert md.version('mmcv') == '2.1.0', md.version('mmcv')
try:
    md.version('mmcv-lite')
except md.PackageNotFoundError:
    pass
else:
    raise SystemExit('mmcv-lite is installed next to mmcv: remove the venv and rerun')
import mmcv.ops  # noqa: F401  (compiled ops load)
import mmdet  # noqa: F401
PY
    "$vpy" -m pip check
    touch "$venv_dir/.complete"
fi
# The project is NOT installed into the shared venv (an install there would
# point every clone at one of them): the clone gets a thin venv of its own
# over the shared one (tools/make_clone_venv.sh).
bash "$repo_root/tools/make_clone_venv.sh" "$venv_dir" "$repo_root/.venv-det"

echo "[setup-det] environment ready: $repo_root/.venv-det over $venv_dir"
