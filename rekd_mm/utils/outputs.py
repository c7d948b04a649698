# Copyright (c) rekd_mm contributors. All rights reserved.
"""Output files of the tools: checked before any compute, never the input,
never an existing file without ``--force``, written atomically.

``tools/model_converters/extract_backbone.py CKPT CKPT`` used to replace the
training checkpoint it was reading, in place: a crash half-way lost both. The
helpers here make every tool (``extract_backbone``, ``knn_eval --out``,
``relation_diagnostics --out-dir``):

- refuse an output that is one of its inputs (same path after resolving
  links, or the same file), even with ``--force``;
- refuse an existing output unless ``force`` is set;
- check that the output's folder is (or can be created) writable before
  loading a checkpoint or a data set;
- write through a hidden temporary file in the same folder, fsynced and
  renamed over the final name, so a reader sees the old file or the
  complete new one.
"""
import io
import json
import os
import os.path as osp
from typing import Callable, Iterable, Optional, Sequence

import torch

__all__ = [
    'OutputPathError', 'check_output_file', 'check_output_dir',
    'atomic_save_bytes', 'atomic_torch_save', 'atomic_json_dump',
    'atomic_write_with'
]


class OutputPathError(ValueError):
    """An output path that a tool must not (or cannot) write."""


def _same_file(a: str, b: str) -> bool:
    if osp.realpath(a) == osp.realpath(b):
        return True
    try:
        return osp.samefile(a, b)
    except OSError:
        return False


def _check_writable_parent(path: str, arg: str) -> None:
    """The nearest existing ancestor of ``path`` must be a writable folder
    (the missing ones are created when writing)."""
    parent = osp.dirname(osp.abspath(path))
    probe = parent
    while not osp.exists(probe):
        nxt = osp.dirname(probe)
        if nxt == probe:
            break
        probe = nxt
    if not osp.isdir(probe):
        raise OutputPathError(
            f'{arg}={path!r}: {probe!r} is a file, so the folder {parent!r} '
            'cannot be created')
    if not os.access(probe, os.W_OK | os.X_OK):
        raise OutputPathError(f'{arg}={path!r}: the folder {probe!r} is not '
                              'writable')


def check_output_file(path: str,
                      inputs: Iterable[Optional[str]] = (),
                      force: bool = False,
                      arg: str = 'out') -> None:
    """Check an output file before any compute.

    Args:
        path (str): The output file.
        inputs (Iterable[str]): Files the tool reads (URLs and None are
            skipped).
        force (bool): Whether an existing output may be replaced.
            Defaults to False.
        arg (str): The argument's name in messages. Defaults to ``'out'``.
    """
    if not path:
        raise OutputPathError(f'{arg} is empty')
    for src in inputs:
        if src and '://' not in str(src) and _same_file(path, src):
            raise OutputPathError(
                f'{arg}={path!r} is the input {src!r}: the tool never '
                'overwrites its input. Choose another output file.')
    if osp.isdir(path):
        raise OutputPathError(f'{arg}={path!r} is a folder; give a file '
                              'name')
    if osp.lexists(path) and not force:
        raise OutputPathError(
            f'{arg}={path!r} already exists; pass --force to replace it '
            '(atomically), or choose another name')
    _check_writable_parent(path, arg)


def check_output_dir(path: str,
                     names: Sequence[str],
                     inputs: Iterable[Optional[str]] = (),
                     force: bool = False,
                     arg: str = 'out_dir') -> None:
    """Check an output folder and the files a tool writes into it.

    Args:
        path (str): The folder (created when writing if missing).
        names (Sequence[str]): The file names written into it.
        inputs (Iterable[str]): Files the tool reads.
        force (bool): Whether existing outputs may be replaced.
        arg (str): The argument's name in messages.
    """
    if osp.exists(path) and not osp.isdir(path):
        raise OutputPathError(f'{arg}={path!r} exists and is not a folder')
    inputs = [src for src in inputs if src and '://' not in str(src)]
    existing = []
    for name in names:
        target = osp.join(path, name)
        for src in inputs:
            if _same_file(target, src):
                raise OutputPathError(
                    f'{arg}={path!r}: the output {target!r} is the input '
                    f'{src!r}; the tool never overwrites its input')
        if osp.lexists(target):
            existing.append(target)
    if existing and not force:
        raise OutputPathError(
            f'{arg}={path!r} already holds {existing}; pass --force to '
            'replace them (atomically), or choose another folder')
    if osp.isdir(path):
        if not os.access(path, os.W_OK | os.X_OK):
            raise OutputPathError(f'{arg}={path!r} is not writable')
    else:
        _check_writable_parent(osp.join(path, 'x'), arg)


def _tmp_path(path: str) -> str:
    head, tail = osp.split(osp.abspath(path))
    stem, ext = osp.splitext(tail)
    # Keep the extension: matplotlib picks the format from it.
    return osp.join(head, f'.{stem}.{os.getpid()}.tmp{ext}')


def atomic_write_with(path: str, write: Callable[[str], None]) -> None:
    """Call ``write(tmp)`` for a temporary file next to ``path``, fsync it
    and rename it over ``path``; the temporary file never outlives a
    failure."""
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    tmp = _tmp_path(path)
    try:
        write(tmp)
        with open(tmp, 'rb') as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if osp.exists(tmp):
            os.remove(tmp)


def atomic_save_bytes(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""

    def write(tmp):
        with open(tmp, 'wb') as f:
            f.write(data)

    atomic_write_with(path, write)


def atomic_torch_save(obj, path: str) -> None:
    """``torch.save(obj, path)``, atomically."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_save_bytes(path, buffer.getvalue())


def atomic_json_dump(obj, path: str, **kwargs) -> None:
    """``json.dump(obj, open(path, 'w'))``, atomically."""
    atomic_save_bytes(path, json.dumps(obj, **kwargs).encode())
