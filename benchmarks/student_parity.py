# Copyright (c) rekd_mm contributors. All rights reserved.
"""Does ReKD without relations train its student like mmpretrain's MoCo v2?

``rekd_no_relation`` (a ReKD whose bank is never clustered, no KD) gives its
student MoCo v2's loss, yet on Fashion-MNIST it ended 1.05 kNN under the
MoCo v2 arm (docs/quality.md, session 19). This script trains the two side
by side from the same student: mmpretrain's ``MoCo`` built from the MoCo v2
config, and ``ReKD`` built from the paired ReKD config (``kd=0``, never
clustered), whose student, momentum encoder and queue are copied from the
MoCo model before the first step. Both see the same pre-processed batches
(read once, without workers) and step their own optimiser wrapper and
cosine schedule from their configs. The shuffle-BN permutation of the keys
is, by ``--perm``:

- ``hash``: ReKD's (:func:`~rekd_mm.models.utils.batch_shuffle.
  shuffle_permutation` of the step and of ReKD's ``shuffle_salt``; the
  committed results of session 20 predate the salt, i.e. used salt 0),
  given to both;
- ``randperm``: a seeded ``torch.randperm`` per step, given to both;
- ``own``: each its own (MoCo: ``torch.randperm`` from the global RNG, as
  in mmpretrain; ReKD: the hash).

With a shared permutation the two students must stay equal (measured: bit
for bit, the same operations in the same order): any code difference on the
student's path shows at the first steps. ``own`` shows what the permutation
source alone changes. ``ChannelsLastHook`` is not applied (it changes the
memory layout only).

Example::

    PYTHONPATH=. python benchmarks/student_parity.py --perm hash --seed 0 \\
        --steps 100 --param-every 10 \\
        --out benchmarks/results/student_parity_fashion-mnist_hash_seed0.json
"""
import argparse
import contextlib
import copy
import math
import sys
from typing import Callable, Dict, List, Optional

import torch

try:
    from benchmarks import common
    from benchmarks.analysis_models import moco_key_permutation
except ImportError:  # run as a script from benchmarks/
    import common
    from analysis_models import moco_key_permutation

DEFAULT_CONFIGS = dict(
    rekd='configs/rekd_mobilenet-v2-cifar-t-resnet18-cifar_1xb64-4ki_'
    'fashion-mnist.py',
    mocov2='configs/mocov2_mobilenet-v2-cifar_1xb64-4ki_fashion-mnist.py')
PERMS = ('hash', 'randperm', 'own')


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--rekd-config', default=DEFAULT_CONFIGS['rekd'])
    parser.add_argument('--mocov2-config', default=DEFAULT_CONFIGS['mocov2'])
    parser.add_argument('--perm', choices=PERMS, default='hash')
    parser.add_argument('--steps', type=int, default=200)
    parser.add_argument(
        '--param-every',
        type=int,
        default=25,
        help='compare the two students every this many steps')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--threads', type=int, default=1)
    parser.add_argument('--out', help='JSON result file (and .md)')
    args = parser.parse_args(argv)
    if args.steps < 1 or args.param_every < 1:
        parser.error('--steps and --param-every must be >= 1')
    return args


def load_configs(args: argparse.Namespace):
    """The MoCo v2 and the ReKD config, ReKD without KD."""
    from mmengine.config import Config
    mocov2 = Config.fromfile(args.mocov2_config)
    rekd = Config.fromfile(args.rekd_config)
    from mmpretrain.models import MoCo
    from mmpretrain.registry import MODELS
    moco_class = MODELS.get(mocov2.model.type)
    if not (isinstance(moco_class, type) and issubclass(moco_class, MoCo)) \
            or rekd.model.type != 'ReKD':
        raise ValueError(
            f'--mocov2-config {args.mocov2_config} must build MoCo (or a '
            f'subclass) and --rekd-config {args.rekd_config} ReKD; got '
            f'{mocov2.model.type!r} and {rekd.model.type!r}')
    rekd.model.loss_weights = dict(rekd.model.get('loss_weights', {}), kd=0.0)
    rekd.model.kd_projection = False
    return mocov2, rekd


def build_pair(mocov2_cfg, rekd_cfg, seed: int):
    """Both models, the ReKD student (with its momentum encoder and queue)
    a copy of the MoCo one."""
    from mmengine.runner import set_random_seed
    from mmpretrain.registry import MODELS
    set_random_seed(seed)
    moco = MODELS.build(copy.deepcopy(mocov2_cfg.model))
    moco.init_weights()
    set_random_seed(seed)
    rekd = MODELS.build(copy.deepcopy(rekd_cfg.model))
    rekd.init_weights()
    with torch.no_grad():
        for name in ('backbone', 'neck'):
            student = getattr(moco, name).state_dict()
            getattr(rekd, name).load_state_dict(student)
        rekd.encoder_k.load_state_dict(moco.encoder_k.state_dict())
        rekd.queue.copy_(moco.queue)
    # No RelationMinerHook here: the bank is never clustered on purpose.
    rekd.confirm_mining_schedule('never clustered (student_parity.py)')
    return moco.train(), rekd.train()


def read_batches(cfg, steps: int, seed: int) -> List[Dict]:
    """``steps`` pre-processed batches of the config's loader, read before
    any training so that no model's draw from the global RNG changes
    them. Without workers the augmentations draw from the process's global
    RNGs, seeded here: the same ``seed`` reads the same batches."""
    from mmengine.runner import Runner, set_random_seed
    from mmpretrain.registry import MODELS
    set_random_seed(seed)
    loader_cfg = copy.deepcopy(cfg.train_dataloader)
    loader_cfg.update(num_workers=0, persistent_workers=False)
    loader = Runner.build_dataloader(loader_cfg, seed=seed)
    preprocessor = MODELS.build(
        cfg.model.get('data_preprocessor')
        or dict(type='SelfSupDataPreprocessor'))
    batches, iterator = [], iter(loader)
    while len(batches) < steps:
        try:
            batch = next(iterator)
        except StopIteration:
            iterator = iter(loader)
            continue
        batches.append(preprocessor(batch, True))
    return batches


def permutations(kind: str, steps: int, batch: int, seed: int,
                 salt: torch.Tensor) -> Optional[List[torch.Tensor]]:
    """The shared permutation of every step, or None for ``own``
    (``salt``: ReKD's ``shuffle_salt``, for ``hash``)."""
    from rekd_mm.models.utils.batch_shuffle import shuffle_permutation
    if kind == 'own':
        return None
    if kind == 'hash':
        # ReKD asks after its momentum update: step t uses steps = t + 1.
        return [
            shuffle_permutation(torch.tensor(t + 1), batch, salt)
            for t in range(steps)
        ]
    gen = torch.Generator().manual_seed(seed)
    return [torch.randperm(batch, generator=gen) for _ in range(steps)]


@contextlib.contextmanager
def shared_permutation(rekd, current: Optional[Callable[[], torch.Tensor]]):
    """Within the block, both models shuffle their keys with ``current()``
    (nothing changes when it is None)."""
    if current is None:
        yield
        return
    rekd.shuffle_permutation = lambda batch_size: current()
    try:
        with moco_key_permutation(current):
            yield
    finally:
        del rekd.shuffle_permutation


def max_relative_difference(moco, rekd) -> float:
    """Largest ``|a - b| / (|a| + 1e-12)`` norm ratio over the student's
    weights and floating-point buffers (backbone and neck: the BN running
    statistics are what the kNN's eval-mode features use)."""
    worst = 0.0
    for name in ('backbone', 'neck'):
        ours, theirs = getattr(rekd, name), getattr(moco, name)
        mine = dict(ours.named_parameters(), **dict(ours.named_buffers()))
        for key, tensor in list(theirs.named_parameters()) + list(
                theirs.named_buffers()):
            if not tensor.is_floating_point():
                continue
            diff = float((mine[key] - tensor).norm() / (tensor.norm() + 1e-12))
            # NaN compares False: count it as the worst difference.
            worst = max(worst, diff if math.isfinite(diff) else math.inf)
    return worst


def run(args: argparse.Namespace) -> Dict:
    """Train both students ``args.steps`` steps; their losses per step and
    their state differences every ``args.param_every`` steps."""
    from mmengine.optim.scheduler import CosineAnnealingLR
    common.init_scope()
    mocov2_cfg, rekd_cfg = load_configs(args)
    batches = read_batches(mocov2_cfg, args.steps, args.seed)
    moco, rekd = build_pair(mocov2_cfg, rekd_cfg, args.seed)
    batch = batches[0]['inputs'][0].shape[0]
    perms = permutations(args.perm, args.steps, batch, args.seed,
                         rekd.shuffle_salt)
    wrappers, schedulers = [], []
    for model, cfg in ((moco, mocov2_cfg), (rekd, rekd_cfg)):
        wrapper = common.build_optim_wrapper(model, cfg, 'cpu')
        wrappers.append(wrapper)
        schedulers.append(
            CosineAnnealingLR(
                wrapper, T_max=cfg.train_cfg.max_iters, by_epoch=False))
    torch.manual_seed(args.seed)  # MoCo's own randperm (``--perm own``)
    records, param_checks = [], []
    for step in range(args.steps):
        data = batches[step]
        current = None if perms is None else (lambda perm=perms[step]: perm)
        losses = []
        for model, wrapper, key in ((moco, wrappers[0], 'loss'),
                                    (rekd, wrappers[1], 'loss_relation')):
            with shared_permutation(rekd, current):
                out = common.train_step(model, wrapper, data['inputs'],
                                        data['data_samples'])
            losses.append(float(out[key].detach()))
            if not math.isfinite(losses[-1]):
                raise FloatingPointError(
                    f'step {step + 1}: the {key} of '
                    f'{type(model).__name__} is {losses[-1]}; a diverged '
                    'run says nothing about parity (lower the learning '
                    'rate of the configs)')
        for scheduler in schedulers:
            scheduler.step()
        records.append(
            dict(step=step + 1, mocov2=losses[0], rekd_no_relation=losses[1]))
        if (step + 1) % args.param_every == 0 or step + 1 == args.steps:
            param_checks.append(
                dict(
                    step=step + 1,
                    max_relative_state_difference=max_relative_difference(
                        moco, rekd)))
            worst = param_checks[-1]['max_relative_state_difference']
            print(
                f'step {step + 1}: loss {losses[0]:.5f} / {losses[1]:.5f}, '
                f'state {worst:.2e}',
                flush=True)
    return dict(records=records, param_checks=param_checks)


def summarise(records: List[Dict]) -> Dict:
    """Loss gaps over the first steps and the mean losses of the last
    quarter."""
    gaps = [abs(r['mocov2'] - r['rekd_no_relation']) for r in records]
    tail = records[-max(1, len(records) // 4):]
    return dict(
        max_abs_loss_gap_first_10=max(gaps[:10]),
        max_abs_loss_gap=max(gaps),
        last_quarter_steps=len(tail),
        last_quarter_mean_mocov2=sum(r['mocov2'] for r in tail) / len(tail),
        last_quarter_mean_rekd_no_relation=sum(r['rekd_no_relation']
                                               for r in tail) / len(tail))


def markdown(results: Dict) -> str:
    summary, checks = results['summary'], results['param_checks']
    lines = [
        f"# Student parity, permutation `{results['perm']}`, "
        f"{results['steps']} steps", '', f"`{results['command']}`", '',
        common.markdown_table(['quantity', 'value'],
                              [[key, f'{value:.6g}']
                               for key, value in summary.items()]), '',
        common.markdown_table(
            ['step', 'max relative difference of weights and BN statistics'],
            [[c['step'], f"{c['max_relative_state_difference']:.3e}"]
             for c in checks])
    ]
    return '\n'.join(lines)


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    out = run(args)
    results = dict(
        command=common.command_line(),
        machine=common.machine_info(),
        perm=args.perm,
        steps=args.steps,
        seed=args.seed,
        configs=dict(mocov2=args.mocov2_config, rekd=args.rekd_config),
        summary=summarise(out['records']),
        **out)
    common.write_results(args.out, results, markdown(results))
    print(markdown(results))


if __name__ == '__main__':
    sys.exit(main())
