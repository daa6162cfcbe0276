"""Worker processes of ``upgrade --jobs``: how many, how they start, how they run torch.

Shared by the formats whose files convert independently (sharded checkpoints, DCP
directories); the parent plans, the workers write and verify, the parent commits.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from compat.checkpoint import request
from compat.checkpoint.progress import Progress
from compat.formats.errors import CheckpointError

#: default ``--jobs``: one worker per GiB of data to rewrite, at most
WORKER_BYTES = 2**30


def count(requested: int | None, sizes: Sequence[int]) -> int:
    """Workers for items of these byte sizes: ``requested`` (``--jobs``), or by default the
    usable cores capped by memory (:func:`request.default_jobs`) and to one worker per
    :data:`WORKER_BYTES` (a worker costs a process start); never more than the items."""
    if requested is None:
        jobs = min(request.default_jobs(max(sizes, default=0)), sum(sizes) // WORKER_BYTES)
    else:
        jobs = requested
    return max(1, min(jobs, len(sizes)))


def context() -> multiprocessing.context.BaseContext:
    """Forked workers where that is safe, fresh interpreters elsewhere.

    A fork costs milliseconds; a spawned worker imports torch and compat again (2-3 s,
    longer than converting a 256 MiB shard). Forking is used on Linux when this process
    runs no other Python thread (a thread holding a lock at the fork would leave it held
    in the child). torch's OpenMP pool is the other hazard: a forked child that runs a
    multi-threaded op after the parent used the pool hangs; :func:`single_threaded`,
    the workers' initializer, sets one thread before any op runs in the child, which
    avoids it (a hang reproduced here without it; tests/test_upgrade_jobs.py converts in
    forked workers after a multi-threaded matmul in the parent)."""
    if sys.platform == "linux" and threading.active_count() == 1:
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")


def single_threaded() -> None:
    """Worker initializer: one torch thread per worker (the processes are the parallelism;
    torch's default of one thread per core in every worker oversubscribes the cores, and
    in a forked worker a multi-threaded op can hang on the parent's OpenMP pool)."""
    torch.set_num_threads(1)


def pool(jobs: int) -> concurrent.futures.ProcessPoolExecutor:
    """``jobs`` single-threaded worker processes started as :func:`context` says."""
    return concurrent.futures.ProcessPoolExecutor(
        jobs, mp_context=context(), initializer=single_threaded
    )


@dataclass(frozen=True)
class Call:
    """One task for :func:`run`: ``fn(*args)`` in a worker. ``label`` names it in an error;
    ``nbytes`` is what it advances the progress bar by when it ends."""

    fn: Callable[..., Any]
    args: tuple[Any, ...]
    label: str
    nbytes: int


def run(
    jobs: int, calls: Sequence[Call], progress: Progress, done: Callable[[Call, Any], None]
) -> None:
    """Run ``calls`` in ``jobs`` workers (:func:`pool`), handing each result to ``done`` as
    it arrives. Every call runs to its end; then one :class:`CheckpointError` lists each
    failure as ``label: error``. The results of the calls that succeeded have all reached
    ``done`` by then, so that the caller can discard what they wrote."""
    errors = []
    with pool(jobs) as executor:
        futures = {executor.submit(call.fn, *call.args): call for call in calls}
        for future in concurrent.futures.as_completed(futures):
            call = futures[future]
            try:
                result = future.result()
            except Exception as err:
                errors.append(f"{call.label}: {err}")
            else:
                done(call, result)
            progress.advance(call.nbytes)
    if errors:
        raise CheckpointError(errors)
