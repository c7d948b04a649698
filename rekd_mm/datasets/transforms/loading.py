# Copyright (c) OpenMMLab. All rights reserved.
# Derived from mmcv 2.1.0's LoadImageFromFile.transform
# (mmcv/transforms/loading.py, Apache-2.0);
# modified by rekd_mm contributors.
from typing import Optional

import mmcv
import numpy as np
from mmcv.transforms import LoadImageFromFile
from mmengine import fileio
from mmengine.logging import MMLogger
from mmpretrain.registry import TRANSFORMS

__all__ = ['SafeLoadImageFromFile']


def _one_line(err: Exception) -> str:
    # OpenCV's messages span several lines.
    return ' '.join(str(err).split())


@TRANSFORMS.register_module()
class SafeLoadImageFromFile(LoadImageFromFile):
    """Load an image file; an unreadable or corrupt file is a clear error
    naming the file, or, with ``skip_corrupt=True``, a warning and another
    sample.

    mmcv's ``LoadImageFromFile`` handles a broken file in four different
    ways depending on its options (measured with mmcv 2.1.0): with the
    default cv2 decoder a corrupt file fails an ``assert`` (gone under
    ``python -O``, where the ``None`` image then crashes a later transform)
    and ``ignore_empty=True`` does not skip it; an empty file raises an
    OpenCV error without the path; with ``imdecode_backend='pillow'`` the
    error says ``cannot identify image file <_io.BytesIO ...>``, again
    without the path; and ``ignore_empty=True`` with pillow skips every
    broken file silently. Here every case behaves the same way.

    Returning ``None`` makes mmengine's ``BaseDataset`` draw another random
    sample (at most ``max_refetch`` times, 1000 by default) in training; in
    ``test_mode`` it raises, so ``skip_corrupt`` is for training sets.

    Required Keys: ``img_path``.
    Added Keys: ``img``, ``img_shape``, ``ori_shape``.

    Args:
        skip_corrupt (bool): Skip an unreadable or undecodable image with a
            warning (once per file and process) instead of raising
            ``OSError``. Defaults to False.
        **kwargs: Arguments of mmcv's ``LoadImageFromFile`` (``to_float32``,
            ``color_type``, ``imdecode_backend``, ``backend_args``...).
            ``ignore_empty=True`` means ``skip_corrupt=True``.
    """

    def __init__(self, skip_corrupt: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        self.skip_corrupt = bool(skip_corrupt or self.ignore_empty)
        self._warned = set()

    def _read_bytes(self, filename: str) -> bytes:
        if self.file_client_args is not None:
            file_client = fileio.FileClient.infer_client(
                self.file_client_args, filename)
            return file_client.get(filename)
        return fileio.get(filename, backend_args=self.backend_args)

    def _decode(self, filename: str) -> tuple:
        """``(image, None)`` or ``(None, what went wrong)``."""
        try:
            img_bytes = self._read_bytes(filename)
        except Exception as err:
            return None, (f'cannot read image {filename!r} '
                          f'({type(err).__name__}: {_one_line(err)})')
        reason = 'not a decodable image'
        try:
            img = mmcv.imfrombytes(
                img_bytes, flag=self.color_type, backend=self.imdecode_backend)
        except Exception as err:
            img, reason = None, f'{type(err).__name__}: {_one_line(err)}'
        if img is None:
            return None, (f'cannot decode image {filename!r} ({reason}; '
                          f'{len(img_bytes)} bytes)')
        return img, None

    def transform(self, results: dict) -> Optional[dict]:
        """Load the image of ``results['img_path']``.

        Args:
            results (dict): Result dict from the data set.

        Returns:
            dict or None: The results with the image, or None for a skipped
            file.
        """
        filename = results['img_path']
        img, problem = self._decode(filename)
        if problem is not None:
            if not self.skip_corrupt:
                raise OSError(
                    f'{problem}. Replace or delete the file, or set '
                    'skip_corrupt=True in the SafeLoadImageFromFile step of '
                    'the pipeline to skip unreadable images with a warning.')
            if filename not in self._warned:
                self._warned.add(filename)
                MMLogger.get_current_instance().warning(
                    f'{problem}: skipped (skip_corrupt=True), another '
                    'sample is drawn instead')
            return None
        if self.to_float32:
            img = img.astype(np.float32)
        results['img'] = img
        results['img_shape'] = img.shape[:2]
        results['ori_shape'] = img.shape[:2]
        return results

    def __repr__(self) -> str:
        return super().__repr__()[:-1] + f', skip_corrupt={self.skip_corrupt})'
