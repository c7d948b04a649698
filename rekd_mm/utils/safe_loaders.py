# Copyright (c) rekd_mm contributors. All rights reserved.
"""``weights_only=True`` for every scheme of mmengine's ``CheckpointLoader``.

mmengine 0.10.7 loads ``http(s)://`` checkpoints with
``torch.hub.load_state_dict_from_url``, which passes ``weights_only=False``
explicitly: a pickle served at a URL runs arbitrary code, whatever torch's
default. ``torchvision://``, ``modelzoo://``, ``open-mmlab://``,
``openmmlab://`` and ``mmcls://`` resolve to such URLs. Every path that
reads a checkpoint by name goes through ``CheckpointLoader`` (``load_from``,
``--resume``, ``init_cfg=dict(type='Pretrained')``, the offline teacher,
``tools/knn_eval.py``, ``tools/model_converters/extract_backbone.py``,
``tools/analysis_tools/relation_diagnostics.py``), so
:func:`register_safe_checkpoint_loaders` (called by ``import rekd_mm``)
replaces the loaders of those schemes, and of local files, with ones that
download the file (rank 0 first under DDP, as mmengine does) and read it with
:func:`~rekd_mm.utils.checkpoint.torch_load_weights_only`, whose errors name
the URL or file.

``pavi://``, ``s3://`` and ``petrel://`` are left to mmengine: they call
``torch.load`` without the argument, i.e. with ``weights_only=True`` under
torch >= 2.6.
"""
import os
import os.path as osp
from typing import Any, Optional
from urllib.parse import urlparse

import torch
from mmengine.dist import barrier, get_dist_info
from mmengine.runner import checkpoint as mm_ckpt

from .checkpoint import CheckpointLoadError, torch_load_weights_only

__all__ = [
    'load_url_weights_only', 'register_safe_checkpoint_loaders', 'SAFE_SCHEMES'
]

# The schemes whose mmengine loader reaches torch.hub with weights_only=False,
# and local files (for errors that name the file).
SAFE_SCHEMES = ('', 'http://', 'https://', 'modelzoo://', 'torchvision://',
                'open-mmlab://', 'openmmlab://', 'mmcls://')

_REGISTERED = False


def _download(url: str, model_dir: Optional[str]) -> str:
    """Download ``url`` into the torch hub cache (once) and return the
    path."""
    if model_dir is None:
        model_dir = osp.join(torch.hub.get_dir(), 'checkpoints')
    os.makedirs(model_dir, exist_ok=True)
    filename = osp.basename(urlparse(url).path) or 'checkpoint.pth'
    cached = osp.join(model_dir, filename)
    if not osp.exists(cached):
        try:
            torch.hub.download_url_to_file(url, cached, progress=False)
        except Exception as err:
            raise CheckpointLoadError(
                f'could not download checkpoint {url!r}: '
                f'{type(err).__name__}: {err}') from err
    return cached


def load_url_weights_only(url: str,
                          map_location: Any = None,
                          model_dir: Optional[str] = None) -> Any:
    """Download a checkpoint and load it with ``weights_only=True``.

    Under DDP local rank 0 downloads first and the other ranks read the
    cached file after a barrier (mmengine's ``load_from_http`` order).

    Args:
        url (str): An ``http://`` or ``https://`` URL.
        map_location (Any): As in ``torch.load``. Defaults to None.
        model_dir (str, optional): Download folder. Defaults to the torch hub
            cache (``$TORCH_HOME/hub/checkpoints``).

    Returns:
        Any: The loaded checkpoint.
    """
    rank, world_size = get_dist_info()
    cached = None
    if rank == 0:
        cached = _download(url, model_dir)
    if world_size > 1:
        barrier()
        if rank > 0:
            cached = _download(url, model_dir)
    try:
        return torch_load_weights_only(cached, map_location, name=url)
    except CheckpointLoadError as err:
        raise CheckpointLoadError(f'{err} (downloaded to {cached!r})') \
            from err.__cause__


def _load_local(filename: str, map_location: Any = None) -> Any:
    return torch_load_weights_only(filename, map_location)


def _load_http(filename: str, map_location: Any = None) -> Any:
    return load_url_weights_only(filename, map_location)


def _resolve(table: dict, name: str, scheme: str) -> str:
    if name not in table:
        raise KeyError(f'unknown checkpoint {scheme}{name}: '
                       f'{scheme} knows e.g. {sorted(table)[:8]}')
    return table[name]


def _load_torchvision(filename: str, map_location: Any = None) -> Any:
    scheme = 'modelzoo://' if filename.startswith('modelzoo://') else \
        'torchvision://'
    name = filename[len(scheme):]
    url = _resolve(mm_ckpt.get_torchvision_models(), name, scheme)
    return load_url_weights_only(url, map_location)


def _load_openmmlab(filename: str, map_location: Any = None) -> Any:
    scheme = 'open-mmlab://' if filename.startswith('open-mmlab://') else \
        'openmmlab://'
    name = filename[len(scheme):]
    name = mm_ckpt.get_deprecated_model_names().get(name, name)
    url = _resolve(mm_ckpt.get_external_models(), name, scheme)
    if url.startswith(('http://', 'https://')):
        return load_url_weights_only(url, map_location)
    return torch_load_weights_only(
        osp.join(mm_ckpt._get_mmengine_home(), url), map_location)


def _load_mmcls(filename: str, map_location: Any = None) -> Any:
    name = filename[len('mmcls://'):]
    url = _resolve(mm_ckpt.get_mmcls_models(), name, 'mmcls://')
    return mm_ckpt._process_mmcls_checkpoint(
        load_url_weights_only(url, map_location))


# mmengine's log line reads ``class_name[10:]``: keep the ``load_from_``
# prefix so it says e.g. "Loads checkpoint by http backend".
for _fn, _name in ((_load_local, 'load_from_local'),
                   (_load_http, 'load_from_http'), (_load_torchvision,
                                                    'load_from_torchvision'),
                   (_load_openmmlab,
                    'load_from_openmmlab'), (_load_mmcls, 'load_from_mmcls')):
    _fn.__name__ = _name


def register_safe_checkpoint_loaders() -> None:
    """Replace mmengine's loaders of :data:`SAFE_SCHEMES` (idempotent)."""
    global _REGISTERED
    if _REGISTERED:
        return
    loaders = {
        '': _load_local,
        'http://': _load_http,
        'https://': _load_http,
        'modelzoo://': _load_torchvision,
        'torchvision://': _load_torchvision,
        'open-mmlab://': _load_openmmlab,
        'openmmlab://': _load_openmmlab,
        'mmcls://': _load_mmcls,
    }
    for prefix, loader in loaders.items():
        mm_ckpt.CheckpointLoader.register_scheme(prefix, loader, force=True)
    # Code that calls mmengine's module-level loaders directly gets the safe
    # ones too.
    mm_ckpt.load_from_http = _load_http
    mm_ckpt.load_from_local = _load_local
    _REGISTERED = True
