"""Timing helpers shared by the benchmarks (median of repeated runs, warm-up first)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def median_ms(
    fn: Callable[[], object], *, repeat: int = 15, warmup: int = 3, min_time: float = 0.0
) -> float:
    """Median wall time of ``fn()`` in milliseconds.

    Each sample runs ``fn`` enough times to last at least ``min_time`` seconds, so that
    very short calls are not dominated by timer resolution.
    """
    for _ in range(warmup):
        fn()
    inner = 1
    if min_time > 0:
        while True:
            start = time.perf_counter()
            for _ in range(inner):
                fn()
            if time.perf_counter() - start >= min_time:
                break
            inner *= 2
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(inner):
            fn()
        samples.append((time.perf_counter() - start) / inner * 1e3)
    return statistics.median(samples)
