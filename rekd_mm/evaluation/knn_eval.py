# Copyright (c) rekd_mm contributors. All rights reserved.
"""kNN evaluation of a checkpoint's student or teacher backbone (the
function behind ``tools/knn_eval.py`` and the demo)."""
import copy
from typing import Optional, Sequence, Union

from mmengine.config import Config
from mmengine.device import get_device
from mmengine.dist import is_main_process
from mmengine.registry import init_default_scope
from mmpretrain.registry import MODELS

from rekd_mm.utils.checkpoint import load_prefixed_weights
from rekd_mm.utils.outputs import atomic_json_dump, check_output_file
from .knn import build_data_preprocessor, build_knn_dataloader, evaluate_knn

__all__ = [
    'run_knn_eval', 'format_knn_table', 'backbone_cfg_for_prefix',
    'check_knn_args'
]


def backbone_cfg_for_prefix(cfg: Config, prefix: str) -> dict:
    """The backbone config that a checkpoint prefix refers to.

    Args:
        cfg (Config): The pretraining config.
        prefix (str): ``'teacher.*'`` selects ``model.teacher_backbone``,
            anything else ``model.backbone``.

    Returns:
        dict: A copy of the backbone config, without ``init_cfg``.
    """
    key = 'teacher_backbone' if prefix.startswith('teacher.') else 'backbone'
    model_cfg = cfg.get('model', None) or {}
    if key not in model_cfg:
        raise KeyError(
            f'prefix {prefix!r} needs model.{key} in the config, which has '
            f'model keys {sorted(model_cfg)}')
    backbone_cfg = copy.deepcopy(model_cfg[key])
    backbone_cfg.pop('init_cfg', None)  # the checkpoint provides weights
    return backbone_cfg


def check_knn_args(k: Union[int, Sequence[int]], temperature: float,
                   max_train: Optional[int], max_val: Optional[int]) -> None:
    """Check the kNN arguments before any compute, naming the option."""
    ks = [k] if isinstance(k, int) else list(k)
    if not ks or any(
            isinstance(kk, bool) or not isinstance(kk, int) or kk < 1
            for kk in ks):
        raise ValueError(f'--k must be positive integers, got {k!r}')
    if not temperature > 0:
        raise ValueError(f'--temperature must be > 0, got {temperature!r}')
    for name, value in (('--max-train', max_train), ('--max-val', max_val)):
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ValueError(f'{name} must be a positive integer (or left '
                             f'out for all samples), got {value!r}')


def format_knn_table(result: dict, title: str = '') -> str:
    """A small text table of ``k{k}_top1`` / ``k{k}_top5`` entries."""
    ks = sorted(
        {
            int(key[1:].split('_')[0])
            for key in result if key.startswith('k') and '_top' in key
        },
        reverse=True)
    has_top5 = any(key.endswith('_top5') for key in result)
    header = f'| {"k":>5} | {"top-1":>7} |' + (f' {"top-5":>7} |'
                                               if has_top5 else '')
    rule = '+' + '-' * (len(header) - 2) + '+'
    lines = [title] if title else []
    lines += [rule, header, rule]
    for kk in ks:
        row = f'| {kk:>5} | {result[f"k{kk}_top1"]:7.2f} |'
        if has_top5:
            row += f' {result.get(f"k{kk}_top5", float("nan")):7.2f} |'
        lines.append(row)
    lines.append(rule)
    return '\n'.join(lines)


def run_knn_eval(cfg: Union[str, Config],
                 checkpoint: str,
                 prefix: str = 'backbone.',
                 k: Union[int, Sequence[int]] = (200, 20),
                 temperature: float = 0.07,
                 max_train: Optional[int] = None,
                 max_val: Optional[int] = None,
                 out: Optional[str] = None,
                 seed: int = 0,
                 show_progress: bool = True,
                 verbose: bool = True,
                 force: bool = False) -> dict:
    """Weighted-kNN accuracy of a checkpoint's backbone.

    Builds the backbone that ``prefix`` names from the config's model, loads
    the checkpoint's ``prefix``-ed weights (``weights_only=True``; an error
    listing expected and found keys when they do not fit), and scores it on
    ``cfg.knn_train_dataloader`` (memory bank) and ``cfg.knn_val_dataloader``
    (queries) with the model's normalisation. Works in one process or, when
    a process group is initialised, on every rank (features are gathered).

    Args:
        cfg (str | Config): The pretraining config or its path.
        checkpoint (str): The checkpoint (mmengine or plain state dict).
        prefix (str): ``'backbone.'`` (student) or ``'teacher.backbone.'``.
            Defaults to ``'backbone.'``.
        k (int | Sequence[int]): Neighbour counts. Defaults to (200, 20).
        temperature (float): τ. Defaults to 0.07.
        max_train (int, optional): Random subset of the memory bank.
            Defaults to None (all).
        max_val (int, optional): Random subset of the queries.
            Defaults to None (all).
        out (str, optional): Write the result as JSON here (main process).
            Defaults to None.
        seed (int): Seed of the subsets. Defaults to 0.
        show_progress (bool): Progress bars. Defaults to True.
        verbose (bool): Print the table. Defaults to True.
        force (bool): Replace an existing ``out`` (never an input).
            Defaults to False.

    Returns:
        dict: ``k{k}_top1`` / ``k{k}_top5`` (percent), ``num_train``,
        ``num_val``, ``feat_dim``, ``checkpoint``, ``prefix``,
        ``temperature``.
    """
    cfg_path = None
    if not isinstance(cfg, Config):
        cfg_path = cfg
        cfg = Config.fromfile(cfg)
    check_knn_args(k, temperature, max_train, max_val)
    if out:
        check_output_file(out, [checkpoint, cfg_path], force=force, arg='out')
    init_default_scope(cfg.get('default_scope', 'mmpretrain'))
    for name in ('knn_train_dataloader', 'knn_val_dataloader'):
        if cfg.get(name, None) is None:
            raise KeyError(
                f'the config has no {name}: add labelled, un-augmented '
                'train/test dataloaders as in '
                'configs/_base_/fashion-mnist_mocov2-32px.py')

    backbone = MODELS.build(backbone_cfg_for_prefix(cfg, prefix))
    who = 'teacher' if prefix.startswith('teacher.') else 'student'
    load_prefixed_weights(
        backbone, checkpoint, prefix, strict=True, what=f'{who} backbone')
    backbone.to(get_device())

    train_loader = build_knn_dataloader(cfg.knn_train_dataloader, max_train,
                                        seed)
    val_loader = build_knn_dataloader(cfg.knn_val_dataloader, max_val, seed)
    result = evaluate_knn(
        backbone,
        train_loader,
        val_loader,
        build_data_preprocessor(cfg),
        k=k,
        temperature=temperature,
        show_progress=show_progress)
    result.update(
        checkpoint=checkpoint, prefix=prefix, temperature=temperature)

    if is_main_process():
        if verbose:
            print(
                format_knn_table(
                    result, f'weighted kNN, {who} ({prefix!r}), '
                    f'T={temperature}: {result["num_train"]} train / '
                    f'{result["num_val"]} val, {result["feat_dim"]}-d'))
        if out:
            atomic_json_dump(result, out, indent=2)
            if verbose:
                print(f'results written to {out}')
    return result
