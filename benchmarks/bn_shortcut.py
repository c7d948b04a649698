# Copyright (c) rekd_mm contributors. All rights reserved.
"""How much a trained MoCo v2 / ReKD student relies on its batch-mates: the
batch-statistics shortcut of one-process MoCo (docs/quality.md,
"Batch-statistics shortcut").

MoCo's keys are computed by a momentum encoder whose BatchNorm layers use
the statistics of the key batch. On several GPUs the keys are shuffled
across GPUs, so a query and its positive key are normalised beside
different images; on one process (and with whole-batch BN) the key batch
holds the same images as the query batch, and the positive key can be told
from the queued ones by what the batch statistics share with the query (He
et al., 2020, Sec. 3.3). A model that learnt this shortcut loses positive
similarity when its keys are computed beside other images.

For each run (a config and a checkpoint of it), on a few training batches
``A`` (two augmented views, queries from view 1) and companion batches
``B``, in training mode (batch statistics) unless said, this reports the
mean positive cosine ``q·k`` and the InfoNCE loss against the run's own
queue for keys of view 2 computed

- ``as trained``: like the training step (shuffled under split BN),
- ``query's batch-mates``: on ``A`` in order (the query's own batch-mates),
- ``other batch-mates``: each image beside 63 images of ``B``,
- ``eval BN``: with the running statistics (what the kNN sees).

A gap between the first two columns and the third is the shortcut.

Example::

    python benchmarks/bn_shortcut.py \\
        --run bn work_dirs/x/monitored_config.py work_dirs/x/iter_4000.pth \\
        --out benchmarks/results/bn_shortcut.json
"""
import argparse
import copy
import os.path as osp
import sys
from typing import Dict

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
from common import command_line  # noqa: E402
from common import machine_info, markdown_table, write_results  # noqa: E402

KEY_SETTINGS = ('as trained', "query's batch-mates", 'other batch-mates',
                'eval BN')


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument(
        '--run',
        nargs=3,
        action='append',
        required=True,
        metavar=('NAME', 'CONFIG', 'CHECKPOINT'),
        help='a trained MoCo v2 or ReKD run: a name, its config and a '
        'checkpoint; repeat for more runs')
    parser.add_argument('--batches', type=int, default=3)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--out', required=True, help='JSON result file')
    return parser.parse_args(argv)


def load_run(config: str, checkpoint: str):
    """The model (training mode) and a two-view training dataloader of a
    run, the checkpoint loaded with ``weights_only=True``."""
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmengine.runner import Runner
    from mmpretrain.registry import MODELS

    import rekd_mm  # noqa: F401  (registers rekd_mm's modules)
    from rekd_mm.utils.checkpoint import torch_load_weights_only
    cfg = Config.fromfile(config)
    init_default_scope('mmpretrain')
    model = MODELS.build(cfg.model)
    state = torch_load_weights_only(checkpoint)
    model.load_state_dict(state.get('state_dict', state))
    model.train()
    loader_cfg = copy.deepcopy(cfg.train_dataloader)
    # The augmentations in this process, from the seeded global RNGs.
    loader_cfg.update(num_workers=0, persistent_workers=False)
    loader = Runner.build_dataloader(loader_cfg, seed=0)
    return model, loader, cfg.model.head.temperature


def key_permutation(model: nn.Module, batch_size: int):
    """The permutation the training step computes the keys under, or None.

    ReKD's own (deterministic) one under split BN; mmpretrain's MoCo shuffles
    with a random permutation, which only matters under split BN too.
    """
    if hasattr(model, 'shuffle_permutation'):
        return model.shuffle_permutation(batch_size)
    from rekd_mm.models.utils import has_split_batch_norm
    if has_split_batch_norm(model):
        return torch.randperm(batch_size)
    return None


def embed(encoder: nn.Module, images: torch.Tensor) -> torch.Tensor:
    return F.normalize(encoder(images)[0].float(), dim=1)


def infonce(query: torch.Tensor, key: torch.Tensor, queue: torch.Tensor,
            temperature: float) -> Dict[str, float]:
    """Mean positive cosine and MoCo's InfoNCE loss against ``queue``."""
    positive = (query * key).sum(1, keepdim=True)
    logits = torch.cat([positive, query @ queue], dim=1) / temperature
    target = torch.zeros(len(query), dtype=torch.long)
    return dict(
        pos_cosine=positive.mean().item(),
        loss=F.cross_entropy(logits, target).item())


@torch.no_grad()
def keys_beside_others(encoder: nn.Module, images: torch.Tensor,
                       others: torch.Tensor) -> torch.Tensor:
    """The key of each image computed in a batch whose other members come
    from ``others``."""
    keys = []
    for i in range(len(images)):
        batch = torch.cat([images[i:i + 1], others[1:]])
        keys.append(embed(encoder, batch)[0])
    return torch.stack(keys)


@torch.no_grad()
def measure_run(model: nn.Module, loader, temperature: float,
                num_batches: int) -> Dict[str, Dict[str, float]]:
    """Mean over ``num_batches`` of :func:`infonce` for each key setting."""
    query_encoder = nn.Sequential(model.backbone, model.neck)
    key_encoder = model.encoder_k.module
    queue = model.queue.float().clone()
    batches = iter(loader)
    sums = {name: dict(pos_cosine=0., loss=0.) for name in KEY_SETTINGS}
    for _ in range(num_batches):
        views_a = model.data_preprocessor(next(batches), True)['inputs']
        views_b = model.data_preprocessor(next(batches), True)['inputs']
        query = embed(query_encoder, views_a[0])
        keys = {}
        perm = key_permutation(model, len(query))
        keys["query's batch-mates"] = embed(key_encoder, views_a[1])
        if perm is None:
            keys['as trained'] = keys["query's batch-mates"]
        else:
            shuffled = embed(key_encoder, views_a[1][perm])
            keys['as trained'] = torch.empty_like(shuffled)
            keys['as trained'][perm] = shuffled
        keys['other batch-mates'] = keys_beside_others(key_encoder, views_a[1],
                                                       views_b[1])
        model.eval()
        eval_query = embed(query_encoder, views_a[0])
        eval_key = embed(key_encoder, views_a[1])
        model.train()
        for name in KEY_SETTINGS:
            if name == 'eval BN':
                result = infonce(eval_query, eval_key, queue, temperature)
            else:
                result = infonce(query, keys[name], queue, temperature)
            for stat, value in result.items():
                sums[name][stat] += value / num_batches
    return sums


def to_markdown(results: Dict) -> str:
    headers = ['run'] + [f'cos(q, k) {name}' for name in KEY_SETTINGS
                         ] + [f'loss {name}' for name in KEY_SETTINGS]
    rows = []
    for run in results['runs']:
        rows.append([run['name']] +
                    [run['keys'][name]['pos_cosine']
                     for name in KEY_SETTINGS] +
                    [run['keys'][name]['loss'] for name in KEY_SETTINGS])
    lines = [
        '# Batch-statistics shortcut of one-process MoCo', '',
        f'Mean over {results["batches"]} training batches (seed '
        f'{results["seed"]}). Positive cosine and InfoNCE loss of the '
        "query against its key, the key computed like the training step, "
        "beside the query's own batch-mates, beside another batch's "
        'images, and with the running BN statistics; loss against the '
        "run's own queue. See benchmarks/bn_shortcut.py.", '',
        markdown_table(headers, rows), '', 'Runs:', ''
    ]
    lines += [
        f'- {run["name"]}: `{run["config"]}`, `{run["checkpoint"]}`'
        for run in results['runs']
    ]
    lines += ['', 'Command:', '', '```shell', results['command'], '```']
    return '\n'.join(lines)


def main(argv=None) -> None:
    args = parse_args(argv)
    results = dict(
        batches=args.batches,
        seed=args.seed,
        command=command_line(),
        machine=machine_info(),
        runs=[])
    for name, config, checkpoint in args.run:
        for path in (config, checkpoint):
            if not osp.isfile(path):
                sys.exit(f'bn_shortcut: --run {name}: no file {path}')
        torch.manual_seed(args.seed)
        model, loader, temperature = load_run(config, checkpoint)
        keys = measure_run(model, loader, temperature, args.batches)
        results['runs'].append(
            dict(name=name, config=config, checkpoint=checkpoint, keys=keys))
        write_results(args.out, results, to_markdown(results))
        print(f'[bn_shortcut] {name}: ' +
              ', '.join(f'{k}: cos {v["pos_cosine"]:.3f} loss {v["loss"]:.3f}'
                        for k, v in keys.items()))


if __name__ == '__main__':
    main()
