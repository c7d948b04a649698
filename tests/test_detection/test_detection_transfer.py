# Copyright (c) rekd_mm contributors. All rights reserved.
"""Detection transfer: a ReKD checkpoint's student fine-tuned in mmdet.

mmdet 3.3.0 needs mmcv with compiled ops, which must not share a venv with
the main venv's mmcv-lite; it lives in ``.venv-det`` (made by
``tools/setup_det_env.sh``). This test, running in the main venv, writes a
tiny COCO-format data set and a ReKD-like checkpoint, then trains the
Faster R-CNN MobileNetV2 config for 3 iterations with ``.venv-det``'s Python
(``detection_transfer_worker.py``) and checks its JSON report.
"""
import json
import os
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from mmpretrain.models import MobileNetV2

REPO_ROOT = Path(__file__).resolve().parents[2]
DET_PYTHON = REPO_ROOT / '.venv-det' / 'bin' / 'python'
WORKER = Path(__file__).with_name('detection_transfer_worker.py')
CONFIG = (
    REPO_ROOT / 'configs' / 'benchmarks' / 'detection' /
    'faster-rcnn_mobilenet-v2_fpn_8xb2-1x_coco.py')
MAX_ITERS = 3


def _write_tiny_coco(root: Path, num_images: int = 4, size: int = 64):
    """Images with two filled shapes each, boxes and polygons as COCO."""
    rng = np.random.default_rng(0)
    (root / 'images').mkdir(parents=True)
    images, annotations = [], []
    # Names from COCO's 80 classes: CocoDataset maps them to its labels.
    categories = [dict(id=1, name='person'), dict(id=3, name='car')]
    for img_id in range(1, num_images + 1):
        img = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
        for cat_id, (x, y, w, h) in zip((1, 3),
                                        ((4, 6, 24, 30), (30, 28, 30, 32))):
            cv2.rectangle(img, (x, y), (x + w - 1, y + h - 1),
                          (200, 40 * cat_id, 90), -1)
            annotations.append(
                dict(
                    id=len(annotations) + 1,
                    image_id=img_id,
                    category_id=cat_id,
                    bbox=[x, y, w, h],
                    area=w * h,
                    iscrowd=0,
                    segmentation=[[x, y, x + w, y, x + w, y + h, x, y + h]]))
        name = f'{img_id:06d}.jpg'
        cv2.imwrite(str(root / 'images' / name), img)
        images.append(dict(id=img_id, file_name=name, width=size, height=size))
    (root / 'annotations.json').write_text(
        json.dumps(
            dict(
                images=images, annotations=annotations,
                categories=categories)))


def _write_rekd_like_checkpoint(path: Path):
    """Student under ``backbone.``, a decoy teacher under
    ``teacher.backbone.``; every float tensor far from any fresh init
    (a fresh BN has weight 1 and bias 0)."""
    torch.manual_seed(0)
    state = MobileNetV2(widen_factor=1.0).state_dict()
    ckpt = {}
    for key, value in state.items():
        if value.is_floating_point():
            ckpt['backbone.' + key] = torch.rand_like(value) + 0.5
            ckpt['teacher.backbone.' + key] = -torch.rand_like(value) - 0.5
        else:
            ckpt['backbone.' + key] = value
    torch.save(dict(state_dict=ckpt, meta=dict(epoch=0, iter=400)), path)


def test_faster_rcnn_mobilenet_v2_loads_rekd_student_and_trains(tmp_path):
    if not DET_PYTHON.exists():
        pytest.fail(f'{DET_PYTHON} is missing: the detection tests need the '
                    'detection venv (mmcv with ops + mmdet 3.3.0); run '
                    '`bash tools/setup_det_env.sh` first')
    data_root = tmp_path / 'coco_tiny'
    _write_tiny_coco(data_root)
    checkpoint = tmp_path / 'rekd.pth'
    _write_rekd_like_checkpoint(checkpoint)

    env = dict(os.environ, OMP_NUM_THREADS='1')
    proc = subprocess.run([
        str(DET_PYTHON),
        str(WORKER),
        str(CONFIG),
        str(checkpoint),
        str(data_root) + '/',
        str(tmp_path / 'work_dir'),
        str(MAX_ITERS)
    ],
                          cwd=REPO_ROOT,
                          env=env,
                          capture_output=True,
                          text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith('RESULT ')]
    assert lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(lines[-1][len('RESULT '):])

    # mmdet built mmpretrain's backbone through the cross-scope type.
    assert result['backbone_type'] == \
        'mmpretrain.models.backbones.mobilenet_v2.MobileNetV2'
    # Right after init_weights the backbone is the checkpoint's student
    # (not the teacher decoy, not a fresh init) ...
    assert result['num_checked'] == sum(
        v.is_floating_point()
        for v in MobileNetV2(widen_factor=1.0).state_dict().values())
    assert result['differ_after_init'] == []
    # ... while the same detector without the checkpoint matches none of it.
    assert result['equal_in_random_init'] == []
    # The training iterations ran, with finite RPN and R-CNN losses.
    assert result['iters'] == MAX_ITERS
    assert len(result['losses']) == MAX_ITERS
    assert result['all_finite']
    for it in result['losses']:
        assert {
            'loss', 'loss_rpn_cls', 'loss_rpn_bbox', 'loss_cls', 'loss_bbox'
        } <= set(it)
        assert it['loss'] > 0
