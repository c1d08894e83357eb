"""The cycle counter's rate, to turn microseconds into the cycles kernels compare."""

from __future__ import annotations

import functools
import time

from .atomics import rdtsc
from .jit import kernel


@kernel
def read_tsc():
    return rdtsc()


@functools.lru_cache(maxsize=1)
def tsc_hz(window_s: float = 0.02) -> float:
    """Time-stamp counter ticks per second, measured against the monotonic clock."""
    read_tsc()
    rates = []
    for _ in range(3):
        t0, c0 = time.perf_counter(), read_tsc()
        time.sleep(window_s)
        t1, c1 = time.perf_counter(), read_tsc()
        rates.append((c1 - c0) / (t1 - t0))
    return float(sorted(rates)[1])
