#!/usr/bin/env bash
# Copyright (c) rekd_mm contributors. All rights reserved.
# Create (or reuse) the project's virtual environment and install the Debian data package.
#
# The venv lives outside the clone, keyed by the hash of the pinned requirements, so a fresh
# clone on a machine that already built it reuses it (torch alone is ~5.5 GB). `.venv` in the
# repository root is a thin venv over it that adds this clone (tools/make_clone_venv.sh).
# Usage: `source tools/setup_env.sh` or `bash tools/setup_env.sh`.
#
# Environment variables:
#   REKD_CACHE   where venvs are kept (default: ~/.cache/rekd_mm)
#   PYTHON       the interpreter to build the venv with (default: python3.11 or python3)
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache_root="${REKD_CACHE:-$HOME/.cache/rekd_mm}"
python_bin="${PYTHON:-$(command -v python3.11 || command -v python3)}"

req_hash="$(cat "$repo_root"/requirements/runtime.txt "$repo_root"/requirements/tests.txt \
    "$repo_root"/requirements/optional.txt "$repo_root"/setup.cfg | sha256sum | cut -c1-12)"
venv_dir="$cache_root/venv-$req_hash"

# Fashion-MNIST, the embedded default data set (MIT): four *-ubyte.gz files.
fmnist_dir=/usr/share/datasets/fashion-mnist
if [ ! -f "$fmnist_dir/train-images-idx3-ubyte.gz" ]; then
    echo "[setup] installing Debian package dataset-fashion-mnist"
    if [ "$(id -u)" -eq 0 ]; then sudo_cmd=""; else sudo_cmd="sudo"; fi
    $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq dataset-fashion-mnist
fi

# mmpretrain's FashionMNIST reads the unpacked idx files: unpack them into the
# clone (data/ is git-ignored).
fmnist_out="$repo_root/data/fashion_mnist"
mkdir -p "$fmnist_out"
for gz in "$fmnist_dir"/*-ubyte.gz; do
    out="$fmnist_out/$(basename "$gz" .gz)"
    if [ ! -s "$out" ]; then
        gunzip -c "$gz" > "$out.tmp"
        mv -f "$out.tmp" "$out"
    fi
done

if [ ! -f "$venv_dir/.complete" ]; then
    echo "[setup] building venv $venv_dir with $python_bin (first time: a few minutes)"
    rm -rf "$venv_dir"
    mkdir -p "$cache_root"
    "$python_bin" -m venv "$venv_dir"
    "$venv_dir/bin/python" -m pip install -q --upgrade "pip<26" wheel
    # optional.txt (TensorBoard) too: the test suite checks the --tensorboard switch.
    "$venv_dir/bin/python" -m pip install -q -r "$repo_root/requirements/runtime.txt" \
        -r "$repo_root/requirements/tests.txt" -r "$repo_root/requirements/optional.txt"
    touch "$venv_dir/.complete"
fi
# The project is NOT installed into the shared venv (an install there would
# point every clone at one of them): the clone gets a thin venv of its own
# over the shared one (tools/make_clone_venv.sh).
bash "$repo_root/tools/make_clone_venv.sh" "$venv_dir" "$repo_root/.venv"

echo "[setup] environment ready: $repo_root/.venv over $venv_dir"
