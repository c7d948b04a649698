# Copyright (c) rekd_mm contributors. All rights reserved.
"""One table and one plot from several ``regime_search.py`` result files of
the same data set and settings, e.g. MoCo v2 and ReKD arms, which train from
different configs and so are searched into different files (one process per
core, each writing its own ``--out``).

Example::

    python benchmarks/regime_merge.py \\
        benchmarks/results/regime_search_cifar10_4k_splitbn.json \\
        benchmarks/results/regime_search_cifar10_4k_rekd.json \\
        --out benchmarks/results/regime_search_cifar10_4k_compare.json
"""
import argparse
import json
import os.path as osp
import sys
from typing import Dict, List, Optional

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
from regime_search import _write  # noqa: E402

__all__ = ['merge_results', 'main']


def merge_results(paths: List[str]) -> Dict:
    """Merge result files: their settings must be equal and their arm names
    distinct; every arm keeps the config it was trained from.

    Raises:
        SystemExit: Naming the files whose settings differ, or the arm that
            two files share.
    """
    merged = dict(
        settings=None,
        config='several configs (see the table)',
        machine=None,
        commands=[],
        arms={},
        sources=list(paths))
    origin = {}
    for path in paths:
        with open(path) as f:
            results = json.load(f)
        if merged['settings'] is None:
            merged['settings'] = results['settings']
            merged['machine'] = results.get('machine')
            first = path
        elif results['settings'] != merged['settings']:
            raise SystemExit(
                f"{path} was searched with other settings "
                f"({results['settings']}) than {first} "
                f"({merged['settings']}): curves are not comparable")
        for name, arm in results['arms'].items():
            if name in merged['arms']:
                raise SystemExit(f'arm {name!r} is in both {origin[name]} '
                                 f'and {path}')
            origin[name] = path
            merged['arms'][name] = dict(arm, config=results['config'])
        merged['commands'] += [
            c for c in results.get('commands', [])
            if c not in merged['commands']
        ]
    return merged


def main(argv: Optional[List[str]] = None) -> Dict:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('inputs', nargs='+', help='regime_search.py JSONs')
    parser.add_argument(
        '--out',
        required=True,
        help='merged JSON (a .md table and a .png plot next to it)')
    args = parser.parse_args(argv)
    if osp.abspath(args.out) in map(osp.abspath, args.inputs):
        parser.error('--out must not be one of the inputs')
    merged = merge_results(args.inputs)
    _write(merged, args.out)
    return merged


if __name__ == '__main__':
    main()
