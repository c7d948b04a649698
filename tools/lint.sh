#!/usr/bin/env bash
# Copyright (c) rekd_mm contributors. All rights reserved.
# Run OpenMMLab's linters over the tree and exit non-zero on any problem:
# flake8, isort --check-only, yapf --diff (versions in requirements/lint.txt,
# settings in setup.cfg), plus trailing whitespace / missing final newline in
# the .py, .sh, .txt, .cfg and .yml files. Changes nothing; to apply the
# formatters: `.venv-lint/bin/isort PATHS` and `.venv-lint/bin/yapf -i -r PATHS`
# (or `.venv-lint/bin/pre-commit run --all-files`).
#
# Usage: bash tools/lint.sh   (tools/run_tests.sh runs it before pytest)
# The linters' venv is built on first use (tools/setup_lint_env.sh).
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$repo_root/tools/setup_lint_env.sh"
cd "$repo_root"
bin=.venv-lint/bin
paths=(rekd_mm tools tests benchmarks configs setup.py)
# rekd_mm/.mim holds symlinks to configs/ and tools/ (mim's package data):
# the same files again.
status=0

echo "[lint] flake8"
"$bin/flake8" --extend-exclude=.mim "${paths[@]}" || status=1

echo "[lint] isort --check-only"
"$bin/isort" --check-only --diff --extend-skip .mim "${paths[@]}" || status=1

echo "[lint] yapf --diff"
"$bin/yapf" --diff --recursive --parallel --exclude 'rekd_mm/.mim/*' \
    "${paths[@]}" || status=1

echo "[lint] whitespace"
# benchmarks/results/ holds generated tables; Markdown is not checked.
roots=("${paths[@]}" requirements)
for f in setup.cfg model-index.yml .pre-commit-config.yaml; do
    if [ -e "$f" ]; then roots+=("$f"); fi
done
mapfile -t text_files < <(find "${roots[@]}" \
    -path rekd_mm/.mim -prune -o -path benchmarks/results -prune -o \
    -type f \( -name '*.py' -o -name '*.sh' -o -name '*.txt' -o -name '*.cfg' \
    -o -name '*.yml' -o -name '*.yaml' \) -print)
if grep -nE '[[:blank:]]+$' "${text_files[@]}"; then
    echo "[lint] trailing whitespace in the lines above"
    status=1
fi
for f in "${text_files[@]}"; do
    if [ -s "$f" ] && [ -n "$(tail -c1 "$f")" ]; then
        echo "$f: no newline at end of file"
        status=1
    fi
done

if [ "$status" -ne 0 ]; then
    echo "[lint] FAILED (see above)" >&2
else
    echo "[lint] all clean"
fi
exit "$status"
