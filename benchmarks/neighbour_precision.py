# Copyright (c) rekd_mm contributors. All rights reserved.
"""How often a sample's nearest neighbours share its class, in every feature
space of a checkpoint and in raw pixels (docs/quality.md, "Relation
precision").

ReKD's relations can be no better than the neighbourhoods of the space they
are mined in. ``relation_selection.py`` scores the miner's rules on the
teacher queue (the projection space, augmented views); this scores the
spaces themselves on un-augmented images: raw pixels (the data
preprocessor's normalised input, flattened), the student's backbone and
neck, and, for a ReKD checkpoint, the teacher's. For each, on a random
subset of the training split (``knn_train_dataloader``), the share of each
sample's ``n`` nearest other samples (cosine) with its label, as extracted
and after centring on the subset's mean (the miner's ``center='batch'``).

Example::

    python benchmarks/neighbour_precision.py \\
        configs/rekd_mobilenet-v2-cifar-t-resnet18-cifar_1xb64-4ki_cifar10.py\\
        work_dirs/x/iter_4000.pth --num-images 4096 \\
        --out benchmarks/results/neighbour_precision_cifar10.json
"""
import argparse
import os.path as osp
import sys
from typing import Dict, List, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
from common import command_line  # noqa: E402
from common import machine_info, markdown_table, write_results  # noqa: E402

__all__ = ['neighbour_precision', 'feature_spaces', 'load_model', 'main']


def parse_args(argv=None) -> argparse.Namespace:
    from mmengine.config import DictAction
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('config', help='the config the checkpoint trained')
    parser.add_argument('checkpoint', help='a ReKD or MoCo checkpoint')
    parser.add_argument(
        '--num-images',
        type=int,
        default=4096,
        help='random training images to score (the default: a queue)')
    parser.add_argument(
        '--neighbours',
        type=int,
        nargs='+',
        default=[1, 5, 20, 50],
        help='numbers of nearest neighbours')
    parser.add_argument('--seed', type=int, default=0, help='subset seed')
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='overrides of the config, e.g. a data root')
    parser.add_argument('--out', help='JSON path (a .md table next to it)')
    args = parser.parse_args(argv)
    if args.num_images < 2:
        parser.error(f'--num-images must be >= 2, got {args.num_images}')
    if min(args.neighbours) < 1 or max(args.neighbours) >= args.num_images:
        parser.error('--neighbours values must lie in [1, --num-images - 1],'
                     f' got {args.neighbours}')
    return args


def neighbour_precision(feats: torch.Tensor, labels: torch.Tensor,
                        neighbours: Sequence[int],
                        centre: bool) -> Dict[int, float]:
    """Share of each sample's ``n`` nearest other samples with its label.

    Args:
        feats (Tensor): ``(N, C)`` features.
        labels (Tensor): ``(N, )`` labels.
        neighbours (Sequence[int]): The ``n`` values, each below ``N``.
        centre (bool): Whether to subtract the mean feature first.

    Returns:
        dict[int, float]: Precision per ``n``, averaged over samples.
    """
    feats = feats.float()
    if centre:
        feats = feats - feats.mean(0)
    feats = F.normalize(feats, dim=1)
    similarity = feats @ feats.t()
    # A sample is not its own neighbour.
    similarity.fill_diagonal_(-float('inf'))
    same = labels[:, None] == labels[None, :]
    nearest = similarity.topk(max(neighbours), dim=1).indices
    agree = same.gather(1, nearest).float()
    return {n: float(agree[:, :n].mean()) for n in neighbours}


class _Flatten(nn.Module):
    """Raw pixels as a feature space (no parameters)."""

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return inputs.flatten(1)


def feature_spaces(model: nn.Module) -> Dict[str, nn.Module]:
    """The spaces to score: pixels, the student's backbone and neck and, when
    the model has a ``teacher`` (ReKD), the teacher's backbone and neck."""
    spaces = {
        'pixels': _Flatten(),
        'student backbone': model.backbone,
        'student neck': nn.Sequential(model.backbone, model.neck),
    }
    teacher = getattr(model, 'teacher', None)
    if teacher is not None:
        spaces['teacher backbone'] = teacher.backbone
        spaces['teacher neck'] = nn.Sequential(teacher.backbone, teacher.neck)
    return spaces


def load_model(cfg, checkpoint: str) -> nn.Module:
    """Build ``cfg.model`` and load every weight of ``checkpoint`` into it
    (``weights_only``), in eval mode.

    Raises:
        ValueError: When the checkpoint does not fit the config.
    """
    from mmpretrain.registry import MODELS

    from rekd_mm.utils.checkpoint import load_state_dict_file
    model_cfg = cfg.model.copy()
    # As the Runner does: the top-level preprocessor when the model has none.
    model_cfg.setdefault('data_preprocessor', cfg.get('data_preprocessor'))
    model = MODELS.build(model_cfg)
    state = load_state_dict_file(checkpoint)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise ValueError(
            f'{checkpoint!r} does not fit the config: {len(missing)} '
            f'weights missing (e.g. {missing[:3]}), {len(unexpected)} '
            f'unexpected (e.g. {unexpected[:3]}). Pass the config it was '
            'trained with (and its --cfg-options).')
    try:
        model.load_state_dict(state)
    except (RuntimeError, ValueError) as err:  # shapes: torch's, ReKD's
        raise ValueError(f'{checkpoint!r} does not fit the config: {err}') \
            from err
    return model.eval()


def main(argv=None) -> Dict:
    args = parse_args(argv)
    from mmengine.config import Config
    from mmengine.registry import init_default_scope

    import rekd_mm  # noqa: F401  (registers the models)
    from rekd_mm.evaluation import build_knn_dataloader, extract_features
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    if cfg.get('knn_train_dataloader', None) is None:
        raise KeyError(f'{args.config} has no knn_train_dataloader (the '
                       'labelled, un-augmented training split)')
    init_default_scope(cfg.get('default_scope', 'mmpretrain'))
    model = load_model(cfg, args.checkpoint)
    loader = build_knn_dataloader(cfg.knn_train_dataloader, args.num_images,
                                  args.seed)
    rows: List[Dict] = []
    labels = None
    for name, space in feature_spaces(model).items():
        with torch.no_grad():
            feats, labels = extract_features(
                space, loader, model.data_preprocessor, normalize=False)
        if bool((labels < 0).any()):
            raise ValueError('some training images have no label: precision '
                             'cannot be measured')
        for centre in (False, True):
            rows.append(
                dict(
                    space=name,
                    centred=centre,
                    dim=feats.shape[1],
                    precision=neighbour_precision(feats, labels,
                                                  args.neighbours, centre)))
        print(name, rows[-2]['precision'], rows[-1]['precision'], flush=True)
    same = labels[:, None] == labels[None, :]
    chance = (int(same.sum()) - len(labels)) / (
        len(labels) * (len(labels) - 1))
    results = dict(
        command=command_line(),
        machine=machine_info(),
        config=args.config,
        checkpoint=args.checkpoint,
        settings=dict(
            num_images=len(labels),
            neighbours=args.neighbours,
            seed=args.seed,
            cfg_options=args.cfg_options),
        chance=chance,
        rows=rows)
    table = markdown_table(
        ['space', 'centred', 'dim'] +
        [f'precision @{n}' for n in args.neighbours],
        [[r['space'], 'yes' if r['centred'] else 'no', r['dim']] +
         [r['precision'][n] for n in args.neighbours] for r in rows])
    markdown = '\n'.join([
        '# Nearest-neighbour label precision per feature space', '',
        f'`{args.checkpoint}` ({args.config}), {len(labels)} training '
        f'images, un-augmented; chance (any other image): {chance:.4g}.', '',
        table, '', f'Command: `{results["command"]}`'
    ])
    write_results(args.out, results, markdown)
    print(table)
    return results


if __name__ == '__main__':
    main()
