#!/usr/bin/env bash
# Copyright (c) rekd_mm contributors. All rights reserved.
# Build mmcv 2.1.0 with its compiled CPU ops (needed only by mmdet 3.3.0, for
# detection transfer) into a wheel cached outside the clone.
#
# No prebuilt wheel is reachable for torch 2.14; from the sdist, torch 2.14's
# headers need C++20 while mmcv's setup.py appends -std=c++17 last (so CFLAGS
# cannot override it), and the build needs setuptools<82 (pkg_resources)
# without build isolation (for the sdist's metadata step too). ~15-20 min
# on 2 cores. Usage:
#   bash tools/build_mmcv.sh [PYTHON]   # default: .venv/bin/python
# Prints the wheel's path. Environment: REKD_CACHE (default ~/.cache/rekd_mm).
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python_bin="${1:-$repo_root/.venv/bin/python}"
cache_root="${REKD_CACHE:-$HOME/.cache/rekd_mm}"
torch_version="$("$python_bin" -c 'import torch; print(torch.__version__.split("+")[0])')"
wheel_dir="$cache_root/wheels/torch-$torch_version"
mkdir -p "$wheel_dir"
existing="$(ls "$wheel_dir"/mmcv-2.1.0-*.whl 2>/dev/null | head -1 || true)"
if [ -n "$existing" ]; then
    echo "$existing"
    exit 0
fi
build_dir="$(mktemp -d)"
trap 'rm -rf "$build_dir"' EXIT
"$python_bin" -m pip download -q --no-deps --no-build-isolation --no-binary :all: \
    -d "$build_dir" mmcv==2.1.0 >&2
tar -xzf "$build_dir"/mmcv-2.1.0.tar.gz -C "$build_dir"
src="$build_dir/mmcv-2.1.0"
grep -q -- '-std=c++17' "$src/setup.py" || {
    echo "mmcv setup.py no longer sets -std=c++17; check the patch" >&2; exit 1; }
sed -i 's/-std=c++17/-std=c++20/g' "$src/setup.py"
(cd "$src" && MMCV_WITH_OPS=1 FORCE_CUDA=0 MAX_JOBS="${MAX_JOBS:-2}" \
    "$python_bin" -m pip wheel -q --no-deps --no-build-isolation -w "$wheel_dir" . >&2)
ls "$wheel_dir"/mmcv-2.1.0-*.whl
