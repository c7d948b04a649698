# Copyright (c) rekd_mm contributors. All rights reserved.
"""Export the student's and the teacher's backbones of a ReKD (or MoCo v2)
checkpoint as plain weights files that any OpenMMLab tool reads.

A training checkpoint holds mmengine objects besides tensors, so under
torch>=2.6 (``weights_only=True`` by default) mmpretrain's and mmdet's own
tools refuse it unless rekd_mm is imported. The files written here hold only
tensors, strings and numbers: ``{'meta': ..., 'state_dict': {'backbone.*':
tensor}}`` (the teacher's ``teacher.backbone.*`` keys re-prefixed to
``backbone.*``), for ``init_cfg=dict(type='Pretrained', checkpoint=FILE,
prefix='backbone.')``. ``ExportWeightsHook`` writes the same files at the end
of training.

Example::

    python tools/model_converters/export_weights.py work_dirs/demo/iter_400.pth
    # -> work_dirs/demo/iter_400_student_backbone.pth
    #    work_dirs/demo/iter_400_teacher_backbone.pth
    python tools/model_converters/export_weights.py CKPT --out-dir DIR \
        --parts student
"""
import argparse
import os.path as osp

import rekd_mm  # noqa: F401  (checkpoint safe globals)
from rekd_mm.engine.hooks.export_weights_hook import (DEFAULT_PARTS,
                                                      export_backbone_weights)
from rekd_mm.utils.checkpoint import load_state_dict_file


def export_weights(checkpoint: str, out_dir: str = None, parts=None) -> dict:
    """Export the backbones of ``checkpoint``.

    Args:
        checkpoint (str): A ReKD or mmengine checkpoint (read with
            ``weights_only=True`` and rekd_mm's allow-listed globals).
        out_dir (str, optional): Output directory. Defaults to None (the
            checkpoint's directory).
        parts (Sequence[str], optional): ``'student'`` and/or
            ``'teacher'``; each one named must exist. Defaults to None (the
            student, and the teacher when the checkpoint has one).

    Returns:
        dict: The path written for each part.
    """
    state = load_state_dict_file(checkpoint)
    if parts is None:
        selected, required = DEFAULT_PARTS, ('student', )
    else:
        unknown = set(parts) - set(DEFAULT_PARTS)
        if unknown:
            raise ValueError(f'unknown parts {sorted(unknown)}; choose from '
                             f'{list(DEFAULT_PARTS)}')
        selected = {who: DEFAULT_PARTS[who] for who in parts}
        required = tuple(parts)
    stem = osp.splitext(osp.basename(checkpoint))[0]
    return export_backbone_weights(
        state,
        out_dir or osp.dirname(osp.abspath(checkpoint)),
        selected,
        filename_tmpl=stem + '_{}_backbone.pth',
        meta=dict(source=osp.abspath(checkpoint)),
        required=required)


def parse_args():
    parser = argparse.ArgumentParser(
        description='Write the backbones of a ReKD checkpoint as plain '
        "weights files (weights_only=True, prefix 'backbone.')")
    parser.add_argument('checkpoint', help='the training checkpoint')
    parser.add_argument(
        '--out-dir', help="output directory (default: the checkpoint's)")
    parser.add_argument(
        '--parts',
        nargs='+',
        choices=list(DEFAULT_PARTS),
        help='what to export (default: the student, and the teacher when '
        'present)')
    return parser.parse_args()


def main():
    args = parse_args()
    written = export_weights(args.checkpoint, args.out_dir, args.parts)
    for who, path in written.items():
        print(f"{who}: {path} (load with prefix='backbone.')")


if __name__ == '__main__':
    main()
