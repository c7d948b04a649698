# Copyright (c) rekd_mm contributors. All rights reserved.
"""Run a function in several gloo processes on CPU and collect the results.

Used by every test that must prove state stays equal across ranks.
"""
import os
import socket
import sys
import tempfile
from typing import Any, Callable, List

import torch
import torch.distributed as torch_dist
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, fn: Callable, args: tuple,
            out_dir: str) -> None:
    os.environ.update(
        MASTER_ADDR='127.0.0.1',
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world_size),
        OMP_NUM_THREADS='1')
    torch.set_num_threads(1)
    torch_dist.init_process_group('gloo', rank=rank, world_size=world_size)
    try:
        result = fn(rank, world_size, *args)
        torch.save(result, os.path.join(out_dir, f'rank{rank}.pt'))
        # Tear gloo down only once every rank is done: a rank that destroys
        # its group while a peer still completes the last collective can
        # abort that peer ("terminate called without an active exception").
        # (If a rank raises, spawn terminates the others, so no one waits.)
        torch_dist.barrier()
    finally:
        torch_dist.destroy_process_group()
    # Leave without running C++ static destructors: gloo's worker threads
    # occasionally abort the exiting process ("terminate called without an
    # active exception", SIGABRT) after all work is done and saved, which
    # spawn would report as a failure of the test.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def run_distributed(fn: Callable,
                    world_size: int = 2,
                    args: tuple = ()) -> List[Any]:
    """Run ``fn(rank, world_size, *args)`` in ``world_size`` gloo processes.

    ``fn`` must be importable (a module-level function). Its return value
    (tensors, dicts of tensors, numbers) is saved by each rank and returned
    as a list indexed by rank.
    """
    with tempfile.TemporaryDirectory() as out_dir:
        mp.start_processes(
            _worker,
            args=(world_size, _free_port(), fn, args, out_dir),
            nprocs=world_size,
            join=True,
            start_method='spawn')
        return [
            torch.load(
                os.path.join(out_dir, f'rank{rank}.pt'), weights_only=False)
            for rank in range(world_size)
        ]
