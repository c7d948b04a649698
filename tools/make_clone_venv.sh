#!/usr/bin/env bash
# Copyright (c) rekd_mm contributors. All rights reserved.
# Make a clone's own thin venv on top of a shared one.
#
# The heavy venvs (torch alone is ~5.5 GB) are shared by every clone on a
# machine (tools/setup_env.sh, tools/setup_det_env.sh). The project itself must
# not be installed into them: an editable install points at ONE clone, so
# setting up a second clone (a CI checkout, a worktree) would silently make
# the first one import the second one's rekd_mm, or nothing once that clone is
# deleted. Instead each clone gets a small venv of its own (no pip, a few kB)
# whose site-packages holds two .pth files:
#   00-rekd_mm-clone.pth        this clone's root, so `rekd_mm` is this clone's;
#   01-rekd_mm-shared-venv.pth  site.addsitedir(<shared site-packages>), so the
#                               third-party packages (and their own .pth files)
#                               are the shared venv's.
# The clone's root comes first on sys.path, so it also wins over a stale
# editable install left in the shared venv by an older setup script.
#
# Usage: bash tools/make_clone_venv.sh SHARED_VENV CLONE_VENV
#   SHARED_VENV  the shared venv (its bin/python must run)
#   CLONE_VENV   the venv to make or refresh, inside the clone (.venv, ...)
set -euo pipefail

if [ $# -ne 2 ]; then
    echo "usage: make_clone_venv.sh SHARED_VENV CLONE_VENV" >&2
    exit 2
fi
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
shared_venv="$1"
clone_venv="$2"

purelib() {
    "$1/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'
}

# The processes started through CLONE_VENV's interpreter, by the path they
# were started with (relative paths against their working directory).
processes_using() {
    local venv_bin proc argv0 cwd
    venv_bin="$(realpath -s "$1")/bin/"
    for proc in /proc/[0-9]*; do
        # argv[0]: up to the first NUL (kernel threads have none: skipped).
        IFS= read -r -d '' argv0 < "$proc/cmdline" 2>/dev/null || continue
        if [ "${argv0#/}" = "$argv0" ]; then
            cwd="$(readlink "$proc/cwd" 2>/dev/null)" || continue
            argv0="$cwd/$argv0"
        fi
        case "$(realpath -s -m "$argv0")" in
            "$venv_bin"*) echo "${proc#/proc/}" ;;
        esac
    done
}

# Until session 8 the clone's venv was a symlink to the shared one; a venv
# whose interpreter no longer runs (its base Python was replaced) is rebuilt.
if [ -L "$clone_venv" ]; then
    # A process started through the symlink keeps <CLONE_VENV>/lib/... on
    # sys.path and imports lazily from it (torch.save does): replacing the
    # symlink under it makes it fail at its next checkpoint.
    pids="$(processes_using "$clone_venv" | tr '\n' ' ')"
    if [ -n "$pids" ]; then
        echo "make_clone_venv.sh: $clone_venv is a symlink to a shared venv that" \
            "running processes use (pids: $pids); replacing it by this clone's own" \
            "venv would break them. Run the setup again when they have ended." >&2
        exit 1
    fi
fi
if [ -L "$clone_venv" ] || ! "$clone_venv/bin/python" -c '' 2>/dev/null; then
    rm -rf "$clone_venv"
    # Made by the shared venv's Python, the new venv has the same base
    # interpreter (and so the same Python version) as the shared one.
    "$shared_venv/bin/python" -m venv --without-pip "$clone_venv"
fi

clone_site="$(purelib "$clone_venv")"
shared_site="$(purelib "$shared_venv")"
# Written through a temporary file and renamed: a process starting meanwhile
# sees the old file or the new one, never half of one.
write_pth() {
    printf '%s\n' "$2" > "$clone_site/$1.tmp"
    mv -f "$clone_site/$1.tmp" "$clone_site/$1"
}
write_pth 00-rekd_mm-clone.pth "$repo_root"
write_pth 01-rekd_mm-shared-venv.pth "import site; site.addsitedir('$shared_site')"

# Check, without importing them, that `rekd_mm` resolves to this clone and
# the third-party packages to the shared venv.
# -I: neither the working directory nor PYTHONPATH may answer for the venv.
"$clone_venv/bin/python" -I - "$repo_root" "$shared_site" <<'PY'
import importlib.util
import os.path as osp
import sys

repo_root, shared_site = sys.argv[1:]
spec = importlib.util.find_spec('rekd_mm')
expected = osp.join(repo_root, 'rekd_mm', '__init__.py')
if spec is None or osp.realpath(spec.origin) != osp.realpath(expected):
    raise SystemExit(f'rekd_mm resolves to {spec and spec.origin}, not to '
                     f'{expected}: remove {sys.prefix} and run the setup again')
spec = importlib.util.find_spec('mmengine')
if spec is None or not osp.realpath(spec.origin).startswith(
        osp.realpath(shared_site)):
    raise SystemExit(f'mmengine resolves to {spec and spec.origin}, not to '
                     f'the shared venv {shared_site}')
PY

# Up to session 7 the setup installed rekd_mm editable into the shared venv.
# Harmless to this clone now (its root comes first), but a clone still on the
# symlink layout would import another clone's code through it: remove it, so
# that such a clone fails to import rekd_mm, loudly, until it is set up again.
if compgen -G "$shared_site/rekd_mm-*.dist-info" > /dev/null; then
    "$shared_venv/bin/python" -m pip uninstall -q -y rekd_mm
fi
