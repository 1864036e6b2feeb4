"""Benchmarks: each prints its measurement next to a baseline measured in the same run."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path


def best_of(fn: Callable[[], object], repeats: int) -> float:
    """Seconds of the fastest of ``repeats`` calls (the least disturbed by other load)."""
    best = float("inf")
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def status_mb(field: str) -> float:
    """A memory figure of this process from /proc/self/status, in MiB (VmHWM, RssAnon, ...).

    ``VmHWM`` (peak resident set) belongs to the process's own address space,
    unlike ``ru_maxrss``, which Linux carries over from the parent across exec.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")
