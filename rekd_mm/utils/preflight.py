# Copyright (c) rekd_mm contributors. All rights reserved.
"""Checks that run on the config before the Runner is built.

A missing data set otherwise surfaces late and far from its cause: the
Runner builds the model, the hooks and the loggers first, and the error
then comes out of ``CustomDataset`` (``FileNotFoundError`` from deep inside
``list_dir_or_file``) or, with ``persistent_workers``, from a dataloader
worker. :func:`check_data_roots` looks at the config alone, in well under a
second, and names the config key to change.
"""
import inspect
import os
import os.path as osp
from typing import Iterator, List, Optional, Sequence, Tuple

from mmengine.config import Config
from mmpretrain.registry import DATASETS

__all__ = ['DataPathError', 'check_data_roots', 'default_dataloader_keys']


class DataPathError(FileNotFoundError):
    """A data set path of the config is missing or empty."""


def default_dataloader_keys(cfg: Config) -> List[str]:
    """The dataloaders that ``Runner.train()`` builds.

    ``train_dataloader`` always; ``val_dataloader`` when validation is on
    (``val_cfg`` is not None); and any dataloader dict passed to a custom hook
    (e.g. ``RelationMinerHook(init_dataloader=...)``), as
    ``custom_hooks.{i}.{arg}``.

    Args:
        cfg (Config): The merged config.

    Returns:
        list[str]: Dotted config keys of dataloader dicts.
    """
    keys = ['train_dataloader']
    if (cfg.get('val_cfg') is not None
            and cfg.get('val_dataloader') is not None):
        keys.append('val_dataloader')
    for idx, hook in enumerate(cfg.get('custom_hooks') or []):
        for arg, value in hook.items():
            if isinstance(value, dict) and 'dataset' in value:
                keys.append(f'custom_hooks.{idx}.{arg}')
    return keys


def _get_key(cfg: Config, key: str):
    """Read a dotted key (list indices allowed) from the config."""
    node = cfg
    for part in key.split('.'):
        node = node[int(part)] if isinstance(node, (list, tuple)) else \
            node.get(part)
        if node is None:
            return None
    return node


def _leaf_datasets(dataset: dict, key: str) -> Iterator[Tuple[str, dict]]:
    """Yield ``(key, cfg)`` of every real data set under dataset wrappers
    (``ConcatDataset``'s ``datasets``, ``RepeatDataset``'s ``dataset``...).
    """
    if isinstance(dataset.get('datasets'), (list, tuple)):
        for idx, sub in enumerate(dataset['datasets']):
            yield from _leaf_datasets(sub, f'{key}.datasets.{idx}')
    elif isinstance(dataset.get('dataset'), dict):
        yield from _leaf_datasets(dataset['dataset'], f'{key}.dataset')
    else:
        yield key, dataset


def _dataset_class(dataset: dict) -> Optional[type]:
    ds_type = dataset.get('type')
    if inspect.isclass(ds_type):
        return ds_type
    try:
        return DATASETS.get(ds_type)
    except Exception:  # an unknown type is the builder's error to report
        return None


def _will_download(dataset: dict, cls: Optional[type]) -> bool:
    """Whether the data set fetches its files itself (e.g. ``FashionMNIST``
    with ``download=True``, its default): then a missing root is normal."""
    if 'download' in dataset:
        return bool(dataset['download'])
    if cls is None:
        return False
    param = inspect.signature(cls).parameters.get('download')
    return param is not None and param.default is True


def _is_remote(path: str) -> bool:
    return '://' in path


def _missing_or_empty(path: str, want_dir: bool) -> Optional[str]:
    """Describe what is wrong with ``path``, or None when it is fine."""
    if not osp.exists(path):
        return 'does not exist'
    if want_dir:
        if not osp.isdir(path):
            return 'is not a directory'
        with os.scandir(path) as entries:
            if next(entries, None) is None:
                return 'is an empty directory'
    elif not osp.isfile(path):
        return 'is not a file'
    return None


def _check_dataset(dataset: dict, key: str) -> List[Tuple[str, str]]:
    """Problems of one data set config as ``(message, key to override)``."""
    cls = _dataset_class(dataset)
    if _will_download(dataset, cls):
        return []
    if dataset.get('backend_args') or any(
            _is_remote(str(dataset.get(name) or ''))
            for name in ('data_root', 'ann_file')):
        # Files on a storage backend: only the data set can check them.
        return []
    data_root = dataset.get('data_root') or ''
    problems = []
    if data_root:
        what = _missing_or_empty(data_root, want_dir=True)
        if what:
            # Nothing under a missing root can exist: report the root only.
            return [(f"{key}.data_root='{data_root}' {what}",
                     f'{key}.data_root')]

    def resolve(path: str) -> str:
        return path if osp.isabs(path) or not data_root else osp.join(
            data_root, path)

    prefix = dataset.get('data_prefix') or ''
    prefixes = prefix.items() if isinstance(prefix, dict) else [(None, prefix)]
    # mmpretrain's ImageNet reads the folder named after the split when no
    # data_prefix is given.
    split = dataset.get('split')
    if (not prefix and split and cls is not None
            and any(c.__name__ == 'ImageNet' for c in cls.__mro__)):
        path = resolve(split)
        what = _missing_or_empty(path, want_dir=True)
        if what:
            problems.append(
                (f"{key}.data_root='{data_root}' has no usable '{split}' "
                 f"folder (split='{split}'): '{path}' {what}",
                 f'{key}.data_root'))
    for name, value in prefixes:
        if not isinstance(value, str) or not value or _is_remote(value):
            continue
        sub_key = f'{key}.data_prefix' + (f'.{name}' if name else '')
        path = resolve(value)
        what = _missing_or_empty(path, want_dir=True)
        if what:
            shown = f" ('{path}')" if path != value else ''
            problems.append((f"{sub_key}='{value}'{shown} {what}", sub_key))
    ann_file = dataset.get('ann_file') or ''
    if ann_file:
        path = resolve(ann_file)
        what = _missing_or_empty(path, want_dir=False)
        if what:
            shown = f" ('{path}')" if path != ann_file else ''
            problems.append((f"{key}.ann_file='{ann_file}'{shown} {what}",
                             f'{key}.ann_file'))
    return problems


def check_data_roots(cfg: Config,
                     dataloader_keys: Optional[Sequence[str]] = None) -> None:
    """Fail fast, with the config key to change, when a data set's
    ``data_root``, ``data_prefix`` or ``ann_file`` is missing or empty.

    Relative paths are resolved against the current directory, as the data
    sets do. Data sets that download their files (``download=True``) and
    paths on a storage backend (``s3://...``, ``backend_args``) are skipped.

    Args:
        cfg (Config): The merged config (after ``--cfg-options``).
        dataloader_keys (Sequence[str], optional): Dotted keys of the
            dataloader dicts to check. Defaults to None, which checks those
            that training builds (:func:`default_dataloader_keys`).

    Raises:
        DataPathError: Listing every problem found and how to override the
            path from the command line.
    """
    if dataloader_keys is None:
        dataloader_keys = default_dataloader_keys(cfg)
    problems = []
    for loader_key in dataloader_keys:
        loader = _get_key(cfg, loader_key)
        if not isinstance(loader, dict) or not isinstance(
                loader.get('dataset'), dict):
            continue
        for key, dataset in _leaf_datasets(loader['dataset'],
                                           f'{loader_key}.dataset'):
            problems.extend(_check_dataset(dataset, key))
    if not problems:
        return
    lines = [f'  - {message}' for message, _ in problems]
    hints = dict.fromkeys(key for _, key in problems)  # ordered, unique
    raise DataPathError(
        'the data set is not where the config says (relative paths are '
        f'resolved against {os.getcwd()}):\n' + '\n'.join(lines) +
        '\nPut the data there (or link it), or point the config at it, '
        'e.g.\n  --cfg-options ' + ' '.join(f'{key}=/path/to/data'
                                            for key in hints))
