# Copyright (c) rekd_mm contributors. All rights reserved.
"""Extract the student's (or the teacher's) backbone from a ReKD checkpoint.

By default the output is a plain state dict with the prefix stripped
(``conv1.conv.weight``, ...), which any mmpretrain/mmdet backbone loads with
``init_cfg=dict(type='Pretrained', checkpoint=OUT)`` (no prefix). With
``--keep-prefix`` the keys start with ``backbone.`` whatever ``--prefix``
was, so configs that use ``prefix='backbone.'`` load it, the teacher
included. (mmpretrain and mmdet configs can also read the student straight
from the ReKD checkpoint with ``prefix='backbone.'``; extracting gives a
small file without queues, teacher and optimizer state.)

Example::

    python tools/model_converters/extract_backbone.py \
        work_dirs/demo/iter_400.pth work_dirs/demo/student_backbone.pth
    python tools/model_converters/extract_backbone.py \
        work_dirs/demo/iter_400.pth work_dirs/demo/teacher_backbone.pth \
        --prefix teacher.backbone. --keep-prefix
"""
import argparse
import sys
from collections import OrderedDict

import rekd_mm  # noqa: F401  (checkpoint safe globals)
from rekd_mm.utils.checkpoint import load_state_dict_file
from rekd_mm.utils.outputs import (OutputPathError, atomic_torch_save,
                                   check_output_file)


def extract_backbone(checkpoint: str,
                     out: str,
                     prefix: str = 'backbone.',
                     keep_prefix: bool = False,
                     force: bool = False) -> OrderedDict:
    """Write the ``prefix``-ed weights of ``checkpoint`` to ``out``.

    Args:
        checkpoint (str): A ReKD (or any mmengine) checkpoint, read with
            ``weights_only=True``.
        out (str): The output file (a plain state dict of tensors).
        prefix (str): Prefix of the wanted weights. Defaults to
            ``'backbone.'``.
        keep_prefix (bool): Write the keys as ``backbone.<name>`` instead of
            ``<name>``. Defaults to False.
        force (bool): Replace an existing ``out`` (never ``checkpoint``
            itself). Defaults to False.

    Returns:
        OrderedDict: The written state dict.
    """
    if prefix and not prefix.endswith('.'):
        prefix += '.'
    # Before reading anything: never the input, never an existing file
    # without force, a writable folder.
    check_output_file(out, [checkpoint], force=force, arg='out')
    state = load_state_dict_file(checkpoint)
    new_prefix = 'backbone.' if keep_prefix else ''
    picked = OrderedDict(
        (new_prefix + key[len(prefix):], value.detach().clone())
        for key, value in state.items() if key.startswith(prefix))
    if not picked:
        heads = sorted({key.split('.')[0] + '.' for key in state})
        raise KeyError(
            f'no key of {checkpoint!r} starts with {prefix!r}; its keys start '
            f'with {heads[:8]} (e.g. {list(state)[:3]}). Use --prefix '
            "backbone. (student) or teacher.backbone. (teacher).")
    atomic_torch_save(picked, out)
    return picked


def parse_args():
    parser = argparse.ArgumentParser(
        description='Extract a backbone state dict from a ReKD checkpoint')
    parser.add_argument('checkpoint', help='the ReKD checkpoint')
    parser.add_argument('out', help='the output .pth file')
    parser.add_argument(
        '--prefix',
        default='backbone.',
        help="'backbone.' (student, default) or 'teacher.backbone.'")
    parser.add_argument(
        '--keep-prefix',
        action='store_true',
        help="write keys as 'backbone.<name>' (for prefix='backbone.' "
        'loaders) instead of plain backbone keys')
    parser.add_argument(
        '--force',
        action='store_true',
        help='replace an existing output file (never the input checkpoint)')
    return parser.parse_args()


def main():
    args = parse_args()
    try:
        state = extract_backbone(args.checkpoint, args.out, args.prefix,
                                 args.keep_prefix, args.force)
    except OutputPathError as err:
        sys.exit(f'extract_backbone.py: {err}')
    num_params = sum(v.numel() for k, v in state.items()
                     if v.is_floating_point())
    print(f'wrote {len(state)} tensors ({num_params / 1e6:.2f} M values) '
          f'of {args.prefix!r} to {args.out}'
          f"{' with prefix backbone.' if args.keep_prefix else ''}")


if __name__ == '__main__':
    main()
