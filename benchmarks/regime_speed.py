# Copyright (c) rekd_mm contributors. All rights reserved.
"""Cost of one training step of candidate 32 px encoders on CPU: the levers
behind the quality benchmark's small-image regime (docs/quality.md).

For every backbone and execution mode, the median seconds of one MoCo-style
step on a batch of 32 px images: query forward + backward, then a key
forward without gradient (what each encoder of MoCo v2 / ReKD does per
iteration, projector and losses aside). Modes: ``fp32``, ``channels_last``
(NHWC weights and inputs), ``bf16`` (CPU autocast), ``channels_last_bf16``,
``compile`` (``torch.compile`` with its default inductor backend) and
``channels_last_compile``. The first step of each mode is not in the median
(it warms the allocator up, and for the compiled modes it compiles); its time
is recorded as ``first_step_s``.

Time it on a quiet machine with one thread (``OMP_NUM_THREADS=1``), e.g.::

    OMP_NUM_THREADS=1 python benchmarks/regime_speed.py \\
        --out benchmarks/results/regime_speed.json
"""
import argparse
import os
import os.path as osp
import sys
import time
from typing import Dict, List

# isort: off
sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
from common import (  # noqa: E402
    command_line, machine_info, markdown_table, median, write_results)
# isort: on

# name -> backbone config (mmpretrain / rekd_mm registries).
BACKBONES = {
    'mobilenet-v2 (stride 32)':
    dict(type='MobileNetV2'),
    'mobilenet-v2, stride-1 stem':
    dict(type='MobileNetV2_CIFAR', stem_stride=1),
    'resnet-18 (stride 32)':
    dict(type='ResNet', depth=18),
    'resnet-18 CIFAR stem, half width, strides 2222':
    dict(
        type='ResNet_CIFAR',
        depth=18,
        stem_channels=32,
        base_channels=32,
        strides=(2, 2, 2, 2)),
    'resnet-18 CIFAR stem, strides 2222':
    dict(type='ResNet_CIFAR', depth=18, strides=(2, 2, 2, 2)),
}
MODES = ('fp32', 'channels_last', 'bf16', 'channels_last_bf16', 'compile',
         'channels_last_compile')


def time_step(cfg: dict, mode: str, batch: int, repeats: int) -> Dict:
    import torch
    from mmpretrain.registry import MODELS
    model = MODELS.build(cfg)
    model.train()
    inputs = torch.randn(batch, 3, 32, 32)
    if 'channels_last' in mode:
        model = model.to(memory_format=torch.channels_last)
        inputs = inputs.contiguous(memory_format=torch.channels_last)
    if 'compile' in mode:
        model = torch.compile(model)
    autocast = torch.autocast(
        'cpu', dtype=torch.bfloat16, enabled='bf16' in mode)
    times = []
    # The first step warms the allocator up (and compiles).
    for _ in range(repeats + 1):
        start = time.perf_counter()
        with autocast:
            loss = model(inputs)[-1].float().mean()
        loss.backward()
        with torch.no_grad(), autocast:
            model(inputs)
        times.append(time.perf_counter() - start)
    return dict(
        median_s=median(times[1:]), times_s=times[1:], first_step_s=times[0])


def main(argv: List[str] = None) -> Dict:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--batch', type=int, default=128)
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument(
        '--backbones',
        nargs='+',
        default=list(BACKBONES),
        choices=list(BACKBONES))
    parser.add_argument(
        '--modes', nargs='+', default=list(MODES), choices=MODES)
    parser.add_argument('--out', default=None, help='JSON (+ .md) path')
    args = parser.parse_args(argv)
    if args.batch < 1 or args.repeats < 1:
        parser.error('--batch and --repeats must be >= 1')
    import torch
    from mmengine.registry import init_default_scope

    import rekd_mm  # noqa: F401  (MobileNetV2_CIFAR)
    init_default_scope('mmpretrain')
    threads = int(os.environ.get('OMP_NUM_THREADS', '0') or 0)
    if threads:
        torch.set_num_threads(threads)
    rows, records = [], []
    for name in args.backbones:
        base = None
        for mode in args.modes:
            result = time_step(BACKBONES[name], mode, args.batch, args.repeats)
            base = base or result['median_s']
            records.append(dict(backbone=name, mode=mode, **result))
            rows.append([
                name, mode, result['median_s'],
                result['median_s'] / args.batch * 1000,
                base / result['median_s'], result['first_step_s']
            ])
            print(
                f'{name:48s} {mode:20s} {result["median_s"]:.3f} s',
                flush=True)
    headers = [
        'backbone', 'mode', f's / step (batch {args.batch})', 'ms / image',
        f'speed-up vs {args.modes[0]}', 'first step (s)'
    ]
    results = dict(
        benchmark='regime_speed',
        command=command_line(),
        machine=machine_info(),
        settings=dict(batch=args.batch, repeats=args.repeats),
        records=records)
    md = '\n'.join([
        '# One MoCo-style step of candidate 32 px encoders (CPU)', '',
        markdown_table(headers, rows), '',
        'Step: forward + backward of the queries, forward of the keys; '
        'median of the repeats after one warm-up step (the first step: '
        'allocator warm-up, and compilation in the compiled modes).', '',
        f"Command: `{results['command']}`; machine: "
        f"{results['machine']['cpu_model']}, "
        f"{results['machine']['torch_threads']} thread(s)."
    ])
    write_results(args.out, results, md)
    print(md)
    return results


if __name__ == '__main__':
    main()
