"""Small statistics for repeated runs: medians, spreads, drops, scaling."""

from __future__ import annotations

import statistics


def median(xs) -> float:
    xs = list(xs)
    return float(statistics.median(xs)) if xs else float("nan")


def mad(xs) -> float:
    """Median absolute deviation from the median: the spread that goes with a median,
    robust to one repetition that a busy host slowed down."""
    xs = list(xs)
    if len(xs) < 2:
        return 0.0
    m = median(xs)
    return median(abs(x - m) for x in xs)


def spread(xs) -> float:
    """Half the range: the median is within +/- this of every repetition."""
    xs = list(xs)
    return (max(xs) - min(xs)) / 2 if len(xs) > 1 else 0.0


def drop_pct(rate: float, baseline: float) -> float:
    """How much slower than the baseline, in percent (negative: faster)."""
    return (1.0 - rate / baseline) * 100.0 if baseline > 0 else float("nan")


def paired_drops(rates, baselines) -> list[float]:
    """Drop of each repetition against the baseline repetition run with the same seed."""
    return [drop_pct(r, b) for r, b in zip(rates, baselines)]


def efficiency(rate: float, one: float, n: int) -> float:
    """Throughput at n vCPUs against n times the one-vCPU throughput."""
    return rate / (n * one) if one > 0 and n > 0 else float("nan")


def starvation(per_vcpu_ops) -> bool:
    """locktorture's flag: the slowest did less than half of what the fastest did."""
    ops = list(per_vcpu_ops)
    return bool(ops) and max(ops) > 0 and min(ops) < max(ops) / 2
