"""The worst sampled map latency in each second of a run, kept outside the kernel loop.

The kernel keeps only a running maximum of the sampled map latencies
(``abi.S_LAT_MAX``); a collapse that lasts a second shows in it only if it is the
worst moment of the whole run, and not at all in the p99 of the histogram. So,
between two kernel chunks (about ``--chunk-ms`` apart), the vCPU process folds that
maximum into a ring of per-second maxima in its own stats row and resets it
(``fold``): the kernel never sees the ring, and only the row's owner writes it.
Once a second the parent reads the last seconds of every row (``Collector``);
the ring holds ``abi.LAT_RING`` seconds, so a parent late by a few seconds loses
nothing. The run's maximum is ``abi.S_LAT_RUN_MAX`` (``run_max``).

Second i counts from the vCPU's start, warm-up included, as the parent's samples do.
"""

from __future__ import annotations

from . import abi

NS = 1_000_000_000


def fold(row, t_started_ns: int, now_ns: int) -> None:
    """The vCPU side, between chunks: the chunk's maximum into this second's slot and the run's."""
    sec = (now_ns - t_started_ns) // NS
    prev = int(row[abi.S_LAT_SEC])
    if sec != prev:
        # every second skipped since (a pause, a stutter) starts empty, not with a value 6 s old
        for s in range(max(prev + 1, sec - abi.LAT_RING + 1), sec + 1):
            row[abi.S_LAT_RING + s % abi.LAT_RING] = 0
        row[abi.S_LAT_SEC] = sec
    m = int(row[abi.S_LAT_MAX])
    if m:
        row[abi.S_LAT_MAX] = 0
        if m > row[abi.S_LAT_RUN_MAX]:
            row[abi.S_LAT_RUN_MAX] = m
        slot = abi.S_LAT_RING + sec % abi.LAT_RING
        if m > row[slot]:
            row[slot] = m


def run_max(row) -> int:
    """A vCPU's largest sampled map latency over the run (what the kernel has not folded yet included)."""
    return int(max(row[abi.S_LAT_MAX], row[abi.S_LAT_RUN_MAX]))


class Collector:
    """The parent side: per second, the worst over every vCPU."""

    def __init__(self):
        self.worst: dict[int, int] = {}

    def collect(self, stats, n: int) -> None:
        """Read the last ``abi.LAT_RING`` seconds of the first ``n`` rows, the one in progress too: a
        second's maximum only grows until the worker moves on, so the latest reading is the one kept
        (a vCPU paused in second s still has s read in full before it resumes and reuses the slot)."""
        for v in range(n):
            row = stats[v]
            cur = int(row[abi.S_LAT_SEC])
            for s in range(max(0, cur - abi.LAT_RING + 1), cur + 1):
                val = int(row[abi.S_LAT_RING + s % abi.LAT_RING])
                if val > self.worst.get(s, 0):
                    self.worst[s] = val

    def per_second(self) -> list[int]:
        """Second 0, 1, ...: the worst sampled map latency in cycles (0: no sampled map that second)."""
        if not self.worst:
            return []
        return [self.worst.get(s, 0) for s in range(max(self.worst) + 1)]
