# Copyright (c) rekd_mm contributors. All rights reserved.
"""Scaling of the project's spherical k-means, with faiss as a reference.

Clusters ``N x D`` unit embeddings into ``K`` clusters with
:func:`rekd_mm.models.utils.spherical_kmeans.spherical_kmeans` (the function
the relation miner initialises its prototype bank with) and, when
``faiss-cpu`` happens to be installed, with ``faiss.Kmeans(spherical=True)``
on the same data, the same number of Lloyd iterations and the same seeding
rule (random points). faiss is an optional reference only: it is never a
dependency of the project, and this script runs without it.

Reported per (N, K): seconds per Lloyd iteration, the final objective (mean
cosine similarity of every embedding to its nearest centroid, computed the
same way for both), and the extra peak RSS during the run compared with the
``N x K`` score matrix that a naive implementation would build, which shows
that the E-step is really chunked.

Examples::

    # the ladder measured in benchmarks/results (minutes on one core)
    OMP_NUM_THREADS=1 python benchmarks/kmeans_scale.py \\
        --n 100000 300000 --k 1000 10000 --iters 3 \\
        --out benchmarks/results/kmeans_scale.json
    # ImageNet scale (about an hour per iteration pair on one core)
    OMP_NUM_THREADS=1 python benchmarks/kmeans_scale.py \\
        --n 1281167 --k 10000 --iters 10 --out kmeans_imagenet.json
"""
import os

# One thread unless asked otherwise, set before torch is imported: other
# processes share the cores and oversubscription makes timings meaningless.
os.environ.setdefault('OMP_NUM_THREADS', '1')

import argparse  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from typing import Dict, List, Optional  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

# isort: off
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (  # noqa: E402
    command_line, machine_info, markdown_table, median, peak_rss_mib,
    reset_peak_rss, rss_mib, write_results)
# isort: on

from rekd_mm.models.utils.spherical_kmeans import (  # noqa: E402
    kmeans_objective, spherical_kmeans)

__all__ = ['make_embeddings', 'run_ours', 'run_faiss', 'main']


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Spherical k-means scaling: rekd_mm vs faiss (optional)')
    parser.add_argument(
        '--n',
        type=int,
        nargs='+',
        default=[100000],
        help='numbers of embeddings N (ImageNet: 1281167)')
    parser.add_argument(
        '--k',
        type=int,
        nargs='+',
        default=[1000],
        help='numbers of clusters K')
    parser.add_argument('--dim', type=int, default=128, help='dimension D')
    parser.add_argument(
        '--iters', type=int, default=3, help='Lloyd iterations per run')
    parser.add_argument(
        '--repeats',
        type=int,
        default=1,
        help='runs per (N, K) and implementation; the median is reported')
    parser.add_argument(
        '--true-clusters',
        type=int,
        default=1000,
        help='mixture components of the synthetic data (ImageNet classes)')
    parser.add_argument(
        '--chunk-size',
        type=int,
        default=65536,
        help='chunk_size passed to spherical_kmeans (max rows per E-step '
        'block)')
    parser.add_argument(
        '--kmeanspp',
        action='store_true',
        help='also time the k-means++ seeding of spherical_kmeans (one-off '
        'cost, sequential in K)')
    parser.add_argument(
        '--max-seed-pool',
        type=int,
        default=262144,
        help='max_seed_pool for the k-means++ seeding measurement')
    parser.add_argument(
        '--faiss',
        choices=['auto', 'off'],
        default='auto',
        help="'auto': measure faiss when importable; 'off': never")
    parser.add_argument('--threads', type=int, default=1)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument(
        '--out',
        default=None,
        help='JSON result file (a Markdown table is written next to it)')
    return parser.parse_args(argv)


def make_embeddings(num: int, dim: int, num_true: int,
                    seed: int) -> torch.Tensor:
    """Unit vectors drawn around ``num_true`` random directions.

    The noise has about the norm of the centre, so each point has a cosine
    of about 0.7 with its centre: a clustered set, like a trained teacher's
    embeddings, rather than uniform noise where every objective is ~0.
    """
    gen = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(num_true, dim, generator=gen), dim=1)
    out = torch.empty(num, dim)
    step = 65536  # generate in blocks to keep the peak memory low
    for start in range(0, num, step):
        end = min(num, start + step)
        labels = torch.randint(num_true, (end - start, ), generator=gen)
        noise = torch.randn(end - start, dim, generator=gen) / math.sqrt(dim)
        out[start:end] = F.normalize(centres[labels] + noise, dim=1)
    return out


def _peak_extra_mib(rss_before: float) -> Optional[float]:
    peak = peak_rss_mib()
    return None if peak is None else max(0.0, peak - rss_before)


def run_ours(emb: torch.Tensor, num_clusters: int, iters: int, seed: int,
             chunk_size: int) -> Dict:
    """One run of the project's spherical k-means (random seeding)."""
    can_reset = reset_peak_rss()
    before = rss_mib()
    start = time.perf_counter()
    centroids, info = spherical_kmeans(
        emb,
        num_clusters,
        num_iters=iters,
        init='random',
        seed=seed,
        chunk_size=chunk_size,
        distributed=False)
    seconds = time.perf_counter() - start
    peak_extra = _peak_extra_mib(before) if can_reset else None
    return dict(
        seconds=seconds,
        seconds_per_iter=seconds / max(1, info['num_iters']),
        objective=kmeans_objective(emb, centroids),
        num_reseeded=info['num_reseeded'],
        peak_extra_rss_mib=peak_extra)


def run_faiss(emb: torch.Tensor, num_clusters: int, iters: int,
              seed: int) -> Optional[Dict]:
    """The same clustering with ``faiss.Kmeans(spherical=True)``, or None
    when faiss is not installed."""
    try:
        import faiss
    except ImportError:
        return None
    num, dim = emb.shape
    # faiss subsamples to max_points_per_centroid * K points by default
    # (256 * K); raise it so that both implementations see every point.
    kmeans = faiss.Kmeans(
        dim,
        num_clusters,
        niter=iters,
        spherical=True,
        seed=seed,
        verbose=False,
        max_points_per_centroid=math.ceil(num / num_clusters) + 1)
    data = emb.contiguous().numpy()
    can_reset = reset_peak_rss()
    before = rss_mib()
    start = time.perf_counter()
    kmeans.train(data)
    seconds = time.perf_counter() - start
    peak_extra = _peak_extra_mib(before) if can_reset else None
    centroids = torch.from_numpy(kmeans.centroids.copy())
    return dict(
        version=faiss.__version__,
        seconds=seconds,
        seconds_per_iter=seconds / iters,
        objective=kmeans_objective(emb, F.normalize(centroids, dim=1)),
        peak_extra_rss_mib=peak_extra)


def time_kmeanspp(emb: torch.Tensor, num_clusters: int, seed: int,
                  max_seed_pool: int) -> float:
    """Seconds of the k-means++ seeding alone (``num_iters=0``)."""
    start = time.perf_counter()
    spherical_kmeans(
        emb,
        num_clusters,
        num_iters=0,
        init='kmeans++',
        seed=seed,
        max_seed_pool=max_seed_pool,
        distributed=False)
    return time.perf_counter() - start


def _median_run(runs: List[Dict]) -> Dict:
    out = dict(runs[0])
    for key in ('seconds', 'seconds_per_iter'):
        out[key] = median([r[key] for r in runs])
    out['min_seconds_per_iter'] = min(r['seconds_per_iter'] for r in runs)
    out['all_seconds_per_iter'] = [r['seconds_per_iter'] for r in runs]
    out['repeats'] = len(runs)
    return out


def main(argv: Optional[List[str]] = None) -> Dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        import faiss
        faiss.omp_set_num_threads(args.threads)
        faiss_version = faiss.__version__
    except ImportError:
        faiss_version = None
    use_faiss = args.faiss == 'auto' and faiss_version is not None

    # Warm up MKL/OpenMP and faiss once so the first row is not penalised.
    warm = make_embeddings(2048, args.dim, 16, args.seed)
    run_ours(warm, 16, 1, args.seed, args.chunk_size)
    if use_faiss:
        run_faiss(warm, 16, 1, args.seed)

    rows = []
    for num in args.n:
        emb = make_embeddings(num, args.dim, args.true_clusters, args.seed)
        for num_clusters in args.k:
            if num_clusters > num:
                print(f'skip N={num} K={num_clusters}: K > N')
                continue
            # Interleaved (ours, faiss, ours, faiss, ...) so that both see
            # the same background load on a shared machine.
            ours_runs, faiss_runs = [], []
            for _ in range(args.repeats):
                ours_runs.append(
                    run_ours(emb, num_clusters, args.iters, args.seed,
                             args.chunk_size))
                if use_faiss:
                    faiss_runs.append(
                        run_faiss(emb, num_clusters, args.iters, args.seed))
            ours = _median_run(ours_runs)
            row = dict(
                n=num,
                k=num_clusters,
                dim=args.dim,
                iters=args.iters,
                nxk_score_matrix_mib=num * num_clusters * 4 / 2**20,
                embeddings_mib=num * args.dim * 4 / 2**20,
                ours=ours,
                faiss=None)
            if use_faiss:
                row['faiss'] = _median_run(faiss_runs)
                row['time_ratio_ours_over_faiss'] = (
                    ours['seconds_per_iter'] /
                    row['faiss']['seconds_per_iter'])
                row['time_ratio_min_ours_over_faiss'] = (
                    ours['min_seconds_per_iter'] /
                    row['faiss']['min_seconds_per_iter'])
            if args.kmeanspp:
                row['kmeanspp_seeding_seconds'] = time_kmeanspp(
                    emb, num_clusters, args.seed, args.max_seed_pool)
                row['kmeanspp_seed_pool'] = min(num, args.max_seed_pool)
            rows.append(row)
            print(_row_summary(row), flush=True)
        del emb

    results = dict(
        benchmark='kmeans_scale',
        command=command_line(),
        machine=machine_info(),
        faiss_version=faiss_version if use_faiss else None,
        settings=dict(
            dim=args.dim,
            iters=args.iters,
            repeats=args.repeats,
            true_clusters=args.true_clusters,
            chunk_size=args.chunk_size,
            seeding='random points (both implementations)',
            threads=args.threads,
            seed=args.seed),
        rows=rows)
    table = _markdown(results)
    print(table)
    write_results(args.out, results, table)
    return results


def _row_summary(row: Dict) -> str:
    text = (f"N={row['n']} K={row['k']}: ours "
            f"{row['ours']['seconds_per_iter']:.3f} s/iter obj "
            f"{row['ours']['objective']:.4f}")
    if row['faiss']:
        text += (f", faiss {row['faiss']['seconds_per_iter']:.3f} s/iter obj "
                 f"{row['faiss']['objective']:.4f}, ratio "
                 f"{row['time_ratio_ours_over_faiss']:.2f}")
    return text


def _markdown(results: Dict) -> str:
    headers = [
        'N', 'K', 'ours s/iter', 'ours objective', 'ours peak extra MiB',
        'N×K matrix MiB', 'faiss s/iter', 'faiss objective',
        'ours/faiss (medians)', 'ours/faiss (minima)'
    ]
    body = []
    for row in results['rows']:
        faiss = row['faiss'] or {}
        body.append([
            row['n'], row['k'], row['ours']['seconds_per_iter'],
            row['ours']['objective'], row['ours']['peak_extra_rss_mib'],
            row['nxk_score_matrix_mib'],
            faiss.get('seconds_per_iter'),
            faiss.get('objective'),
            row.get('time_ratio_ours_over_faiss'),
            row.get('time_ratio_min_ours_over_faiss')
        ])
    machine = results['machine']
    lines = [
        '# Spherical k-means scaling', '', f"Command: `{results['command']}`",
        '',
        f"Machine: {machine['cpu_model']}, {machine['usable_cores']} usable "
        f"cores, torch {machine['torch']} with {machine['torch_threads']} "
        f"thread(s), faiss {results['faiss_version'] or 'not measured'}, "
        f"load average {machine['load_average']}.", '',
        f"{results['settings']['iters']} Lloyd iterations, random seeding, "
        f"{results['settings']['repeats']} interleaved repeats (medians and "
        'minima of seconds per iteration), '
        f"D={results['settings']['dim']}; objective = mean cosine to the "
        'nearest centroid; peak extra = peak RSS during the run minus RSS '
        'before it.', '',
        markdown_table(headers, body)
    ]
    seeding = [r for r in results['rows'] if 'kmeanspp_seeding_seconds' in r]
    if seeding:
        lines += [
            '', 'k-means++ seeding (one-off, sequential in K):', '',
            markdown_table(['N', 'K', 'seed pool', 'seconds'], [[
                r['n'], r['k'], r['kmeanspp_seed_pool'],
                r['kmeanspp_seeding_seconds']
            ] for r in seeding])
        ]
    return '\n'.join(lines)


if __name__ == '__main__':
    main()
