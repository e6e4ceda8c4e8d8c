"""Timing helpers: warm-up, then the median of many runs (CUDA events on a GPU)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class Timing:
    """Median and spread of ``runs`` timed calls, in seconds."""

    median: float
    p10: float
    p90: float
    runs: int


def time_fn(fn: Callable[[], object], *, device: str = "cpu", warmup: int = 2, runs: int = 10,
            min_seconds: float = 0.0) -> Timing:
    """Time ``fn``; on CUDA with events around each call on the current stream."""
    for _ in range(warmup):
        fn()
    samples: list[float] = []
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()
        t_start = time.perf_counter()
        while len(samples) < runs or time.perf_counter() - t_start < min_seconds:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end) / 1000.0)
    else:
        t_start = time.perf_counter()
        while len(samples) < runs or time.perf_counter() - t_start < min_seconds:
            t = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - t)
    samples.sort()
    n = len(samples)
    return Timing(statistics.median(samples), samples[int(0.1 * (n - 1))],
                  samples[int(0.9 * (n - 1))], n)
