# Copyright (c) rekd_mm contributors. All rights reserved.
"""How precise relations chosen in a ReKD teacher's space can be: the miner's
knobs measured offline on a checkpoint's own queue (docs/quality.md,
"Relation precision").

A ReKD checkpoint holds the teacher's queue in mining space
(``mining_queue``, or ``teacher_queue`` without centring), the true label of
every slot (``queue_labels``, logged for statistics only) and the prototype
bank. Treating every written slot as an anchor and the other slots as its
candidates, this scores, against the labels, the relations that each
selection rule would mine from the same keys:

- ``bank``: same prototype of the checkpoint's bank (assignment threshold
  ``--threshold``, the run's Θ), i.e. what the run itself mined;
- ``bank, Θ = t``: the same bank with a stricter assignment threshold
  (``model.miner.threshold``; anchors below it mine nothing);
- ``bank + cap m``: the same, keeping the ``m`` most similar positives
  (``model.miner.max_positives``);
- ``K = k``: same prototype after re-clustering the queue with spherical
  k-means into ``k`` prototypes (``model.miner.num_prototypes``);
- ``nearest n``: the ``n`` most similar slots, with no prototype at all.

Each row gives the pairwise precision (share of relations whose labels
agree; chance is about 1 / classes), the relations per anchor and the share
of anchors with at least one. A second table says where the ``bank``
rule's wrong relations go: the class pairs they join, each with its share of
the wrong relations and the share a class-blind choice among the same slots
would give it (its share of all different-class slot pairs). Wrong relations
spread like chance merge unrelated classes a little each; wrong relations
concentrated on a few pairs merge exactly the classes the student has to
tell apart (``--class-names`` prints the pairs by name).

It needs no data and no forward pass; its caveat is that the anchors are
queued keys, where training mines from the fresh keys of the current batch
(both are augmented views from the same momentum teacher, at most
``queue_len / batch`` iterations apart).

Example::

    python benchmarks/relation_selection.py \\
        --run rekd_1500 work_dirs/x/iter_1500.pth \\
        --out benchmarks/results/relation_selection_cifar10.json
"""
import argparse
import os.path as osp
import sys
from typing import Dict, List

import torch

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
from common import command_line  # noqa: E402
from common import machine_info, markdown_table, write_results  # noqa: E402

# The label order of mmpretrain's datasets (mmpretrain.datasets.categories),
# written out so that this script reads checkpoints without importing
# mmpretrain.
CLASS_NAMES = {
    'cifar10': ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog',
                'horse', 'ship', 'truck'),
    'fashion-mnist': ('T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat',
                      'Sandal', 'Shirt', 'Sneaker', 'Bag', 'Ankle boot'),
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument(
        '--run',
        nargs=2,
        action='append',
        required=True,
        metavar=('NAME', 'CHECKPOINT'),
        help='a ReKD checkpoint with an initialised bank (repeatable)')
    parser.add_argument(
        '--threshold',
        type=float,
        default=0.5,
        help="the runs' assignment threshold Θ (model.miner.threshold)")
    parser.add_argument(
        '--thresholds',
        type=float,
        nargs='+',
        default=[0.7, 0.8, 0.9],
        help='stricter thresholds Θ to apply to the bank')
    parser.add_argument(
        '--num-prototypes',
        type=int,
        nargs='+',
        default=[10, 30, 100, 300, 1000],
        help='K values to re-cluster the queue with')
    parser.add_argument(
        '--caps',
        type=int,
        nargs='+',
        default=[1, 5, 20],
        help='max_positives values applied to the bank relations')
    parser.add_argument(
        '--nearest',
        type=int,
        nargs='+',
        default=[1, 5, 20, 60, 200],
        help='numbers of nearest slots')
    parser.add_argument(
        '--top-pairs',
        type=int,
        default=5,
        help='class pairs listed in the table of wrong relations')
    parser.add_argument(
        '--class-names',
        choices=sorted(CLASS_NAMES),
        default=None,
        help='name the classes of the table of wrong relations')
    parser.add_argument('--seed', type=int, default=0, help='k-means seed')
    parser.add_argument('--out', help='JSON path (a .md table next to it)')
    args = parser.parse_args(argv)
    for name in ('num_prototypes', 'caps', 'nearest'):
        if min(getattr(args, name)) < 1:
            parser.error(f"--{name.replace('_', '-')} values must be >= 1")
    if args.top_pairs < 1:
        parser.error('--top-pairs must be >= 1')
    for value in [args.threshold, *args.thresholds]:
        if not -1 <= value <= 1:
            parser.error(f'thresholds must lie in [-1, 1], got {value}')
    return args


def load_queue(checkpoint: str) -> Dict[str, torch.Tensor]:
    """The written slots of a ReKD checkpoint's teacher queue in mining space,
    their labels and the bank's prototypes (read with ``weights_only``).

    Raises:
        KeyError: When the file is not a ReKD checkpoint with labels.
        ValueError: When its bank was never initialised.
    """
    from rekd_mm.utils.checkpoint import load_state_dict_file
    state = load_state_dict_file(checkpoint)
    needed = ('teacher_queue', 'queue_labels', 'queue_count',
              'miner.prototypes', 'miner.initialized')
    missing = [key for key in needed if key not in state]
    if missing:
        raise KeyError(f'{checkpoint!r} is not a ReKD checkpoint: no '
                       f'{missing} (keys like {list(state)[:4]})')
    if not bool(state['miner.initialized']):
        raise ValueError(f'the prototype bank in {checkpoint!r} was never '
                         'initialised: there are no relations to score')
    queue = state.get('mining_queue', state['teacher_queue']).float()
    count = int(state['queue_count'])
    labels = state['queue_labels'][:count].long()
    if bool((labels < 0).any()):
        raise ValueError(f'{checkpoint!r}: some written queue slots have no '
                         'label (an unlabelled training set): precision '
                         'cannot be measured')
    keys = torch.nn.functional.normalize(queue[:, :count].t(), dim=1)
    return dict(
        keys=keys, labels=labels, prototypes=state['miner.prototypes'].float())


def score_relations(relations: torch.Tensor,
                    same_label: torch.Tensor) -> Dict[str, float]:
    """Pairwise precision (None without relations), relations per anchor and
    coverage of a ``(L, L)`` bool relation mask (no self-relations) against
    label equality."""
    pairs = int(relations.sum())
    per_anchor = relations.sum(1)
    return dict(
        # None (null in the JSON) when no relation is mined.
        precision=(int(
            (relations & same_label).sum()) / pairs if pairs else None),
        positives_per_anchor=float(per_anchor.float().mean()),
        coverage=float((per_anchor > 0).float().mean()))


def same_prototype(keys: torch.Tensor, prototypes: torch.Tensor,
                   threshold: float) -> torch.Tensor:
    """``(L, L)`` mask of slot pairs assigned to one prototype (the miner's
    connection step: best prototype, unassigned below Θ)."""
    from rekd_mm.models.utils.spherical_kmeans import assign_to_centroids
    assign, sim = assign_to_centroids(keys, prototypes)
    assign = torch.where(sim >= threshold, assign, torch.full_like(assign, -1))
    relations = (assign[:, None] == assign[None]) & (assign >= 0)[:, None]
    relations.fill_diagonal_(False)
    return relations


def wrong_pairs(relations: torch.Tensor, labels: torch.Tensor,
                top: int) -> Dict:
    """Where the wrong relations of a ``(L, L)`` mask go, by class pair.

    With ``O`` the ``(L, C)`` one-hot labels, ``O^T R O`` counts the ordered
    relations between every two classes; its off-diagonal holds the wrong
    ones. A class-blind choice of the same number of wrong relations would
    pick the pair ``{a, b}`` in proportion to its different-class slot
    pairs, ``2 n_a n_b``.

    Args:
        relations (Tensor): ``(L, L)`` bool mask without self-relations.
        labels (Tensor): ``(L,)`` class indices of the slots.
        top (int): Number of pairs returned, most wrong relations first.

    Returns:
        dict: ``wrong`` (number of wrong ordered relations), ``pairs`` (the
        ``top`` unordered class pairs: ``classes``, ``share`` of the wrong
        relations, ``chance_share``, ``enrichment`` = share / chance share),
        ``top_share`` and ``top_chance_share`` (their sums).
    """
    num_classes = int(labels.max()) + 1
    one_hot = torch.nn.functional.one_hot(labels, num_classes).double()
    counts = one_hot.t() @ relations.double() @ one_hot
    sizes = one_hot.sum(0)
    upper = torch.triu_indices(num_classes, num_classes, offset=1)
    # Unordered pairs: both directions of every relation.
    wrong = (counts + counts.t())[upper[0], upper[1]]
    chance = 2 * (sizes[:, None] * sizes[None])[upper[0], upper[1]]
    total = float(wrong.sum())
    chance_share = chance / chance.sum()
    share = wrong / total if total else torch.zeros_like(wrong)
    order = torch.argsort(share, descending=True, stable=True)[:top]
    pairs = [
        dict(
            classes=[int(upper[0, i]), int(upper[1, i])],
            share=float(share[i]),
            chance_share=float(chance_share[i]),
            enrichment=float(share[i] / chance_share[i]))
        for i in order.tolist()
    ]
    return dict(
        wrong=int(total),
        pairs=pairs,
        top_share=sum(p['share'] for p in pairs),
        top_chance_share=sum(p['chance_share'] for p in pairs))


def selection_rows(queue: Dict[str, torch.Tensor], threshold: float,
                   thresholds: List[float], num_prototypes: List[int],
                   caps: List[int], nearest: List[int],
                   seed: int) -> List[Dict]:
    """Score every selection rule on one checkpoint's queue."""
    from rekd_mm.models.utils import spherical_kmeans, top_k_of_mask
    keys, labels = queue['keys'], queue['labels']
    same_label = labels[:, None] == labels[None]
    similarity = keys @ keys.t()
    everyone = torch.ones_like(same_label)
    everyone.fill_diagonal_(False)
    rows = []

    def add(rule: str, relations: torch.Tensor) -> None:
        rows.append(dict(rule=rule, **score_relations(relations, same_label)))

    bank = same_prototype(keys, queue['prototypes'], threshold)
    add(f'bank (K = {len(queue["prototypes"])}, Θ = {threshold:g})', bank)
    for value in thresholds:
        add(f'bank, Θ = {value:g}',
            same_prototype(keys, queue['prototypes'], value))
    for cap in caps:
        add(f'bank + cap {cap}', top_k_of_mask(bank, similarity, cap))
    for num in num_prototypes:
        if num > len(keys):
            continue
        centroids, _ = spherical_kmeans(
            keys, num, seed=seed, distributed=False)
        add(f'K = {num} (re-clustered)',
            same_prototype(keys, centroids, threshold))
    for num in nearest:
        add(f'nearest {num}', top_k_of_mask(everyone, similarity, num))
    add('chance (every other slot)', everyone)
    return rows


def _wrong_pairs_markdown(confusion: Dict, class_names: str = None) -> str:
    names = CLASS_NAMES.get(class_names)

    def pair(classes):
        return ' – '.join(names[c] if names else str(c) for c in classes)

    table = markdown_table([
        'class pair', 'share of wrong relations', 'chance share', 'enrichment'
    ], [[pair(p['classes']), p['share'], p['chance_share'], p['enrichment']]
        for p in confusion['pairs']] + [[
            f"top {len(confusion['pairs'])}", confusion['top_share'],
            confusion['top_chance_share'], None
        ]])
    return (f"Wrong relations of the bank rule by class pair "
            f"({confusion['wrong']} ordered relations):\n\n{table}")


def main(argv=None) -> Dict:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    results = dict(
        command=command_line(),
        machine=machine_info(),
        settings=dict(
            threshold=args.threshold,
            thresholds=args.thresholds,
            num_prototypes=args.num_prototypes,
            caps=args.caps,
            nearest=args.nearest,
            top_pairs=args.top_pairs,
            class_names=args.class_names,
            seed=args.seed),
        runs={})
    lines = []
    for name, checkpoint in args.run:
        queue = load_queue(checkpoint)
        rows = selection_rows(queue, args.threshold, args.thresholds,
                              args.num_prototypes, args.caps, args.nearest,
                              args.seed)
        confusion = wrong_pairs(
            same_prototype(queue['keys'], queue['prototypes'], args.threshold),
            queue['labels'], args.top_pairs)
        results['runs'][name] = dict(
            checkpoint=checkpoint,
            slots=len(queue['keys']),
            rows=rows,
            wrong_pairs=confusion)
        table = markdown_table(
            ['rule', 'precision', 'relations / anchor', 'coverage'], [[
                r['rule'], r['precision'], r['positives_per_anchor'],
                r['coverage']
            ] for r in rows])
        lines += [
            f'### {name} ({len(queue["keys"])} slots, `{checkpoint}`)', '',
            table, '',
            _wrong_pairs_markdown(confusion, args.class_names), ''
        ]
        print('\n'.join(lines[-6:]))
    markdown = '\n'.join([
        '# Relation selection on the teacher queue', '', *lines,
        f'Command: `{results["command"]}`'
    ])
    write_results(args.out, results, markdown)
    return results


if __name__ == '__main__':
    main()
