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


# --- differences the data support ------------------------------------------------------
#
# compare, scale and diff state a difference only when a 95% confidence interval
# over the repetitions excludes it being zero (or, for diff --max-slowdown, the
# threshold). The interval is a seeded percentile bootstrap of the mean (Efron and
# Tibshirani, "An Introduction to the Bootstrap", 1993, ch. 13): numpy only, and the
# same data give the same interval on every run and every host.

LEVEL = 0.95          # the testbed's own choice: the level reviewers expect by default
RESAMPLES = 10_000    # the testbed's own choice: the interval's ends move by < 0.1% of its width
BOOT_SEED = 20_260_101  # fixed, so an interval is a function of the data alone
# Below 5 repetitions a 95% percentile bootstrap cannot support a claim: with 3 the
# chance that a resample repeats the smallest value three times is 1/27 > 2.5%, so
# the interval's lower end is the smallest repetition itself and the interval is just
# the range of the data; with 4 there are only 35 distinct resample means.
MIN_REPEAT = 5


def bootstrap_mean_ci(xs, level: float = LEVEL, resamples: int = RESAMPLES) -> tuple[float, float] | None:
    """The ``level`` percentile-bootstrap interval of the mean of ``xs``; None below MIN_REPEAT values."""
    import numpy as np

    x = np.asarray([v for v in xs if v == v], dtype=float)
    if len(x) < MIN_REPEAT:
        return None
    rng = np.random.default_rng(BOOT_SEED)
    means = x[rng.integers(0, len(x), size=(resamples, len(x)))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def bootstrap_slowdown_ci(a, b, level: float = LEVEL, resamples: int = RESAMPLES) -> tuple[float, float] | None:
    """How much slower B is than A in percent, (1 - mean B / mean A) * 100, as a ``level``
    interval from resampling A and B independently (unpaired: two result files share no
    seeds); None unless both have MIN_REPEAT values."""
    import numpy as np

    a = np.asarray([v for v in a if v == v], dtype=float)
    b = np.asarray([v for v in b if v == v], dtype=float)
    if len(a) < MIN_REPEAT or len(b) < MIN_REPEAT:
        return None
    rng = np.random.default_rng(BOOT_SEED)
    ma = a[rng.integers(0, len(a), size=(resamples, len(a)))].mean(axis=1)
    mb = b[rng.integers(0, len(b), size=(resamples, len(b)))].mean(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        slow = (1.0 - mb / ma) * 100.0
    slow = slow[np.isfinite(slow)]
    if not len(slow):
        return None
    lo, hi = np.quantile(slow, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def excludes(ci: tuple[float, float] | None, value: float = 0.0) -> bool | None:
    """Whether the interval lies wholly on one side of ``value``; None without an interval."""
    if ci is None:
        return None
    return ci[0] > value or ci[1] < value


def method(level: float = LEVEL) -> str:
    """How the intervals are made, for the text and the JSON."""
    return f"{100 * level:g}% percentile bootstrap of the mean over repetitions ({RESAMPLES:,} resamples, seeded)"
