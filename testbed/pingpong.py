"""c, the cost of moving one cache line between two CPUs: a ping-pong.

Two processes, each pinned to one CPU of a pair, share one word in an
anonymous shared mapping (nothing named, so nothing to leak if either dies).
Process ``me`` waits for the word to hold ``2 i + me`` and stores ``2 i + me +
1``: every store must take the line from the other CPU's cache, and every wait
ends by reading it back. Process 0 times blocks of round trips after a warm-up
on its own cycle counter; one transfer is half a round trip of the median block
(a shared host preempts either player now and then: the median block is one no
preemption hit). The spin has no
PAUSE, so this is the line's transfer, not a spinlock's reaction time (the
lock's own spins PAUSE: the measured handoffs of a run hold both).

The pairs (``cpu_pairs``) are one of each relation the allowed CPUs offer:
two SMT siblings of one core, two cores of one socket, two sockets.
"""

from __future__ import annotations

import mmap
import os
import time

import numpy as np

from . import stats
from .atomics import load_acquire, rdtsc, store_release
from .errors import UsageError
from .jit import kernel

RELATIONS = ("siblings", "same socket", "across sockets")
W_BALL, W_FAIL, W_BLOCKS = 0, 8, 16       # the ball and the failure flag each on its own cache line
ROUNDS, WARM, REPEATS = 20000, 2000, 5     # the testbed's own choice: ~10 ms a repetition
BLOCKS = 200             # timed blocks of 100 round trips: the median block is the one no preemption hit
TIMEOUT_S = 10.0


@kernel
def pingpong(buf, me, rounds, warm, limit, blocks):
    """Play ``warm + rounds`` round trips as player ``me``; player 0 writes the cycles of each block of
    ``rounds // len(blocks)`` round trips after the warm-up into ``blocks``. 0, or -1 if the partner
    stopped answering for ``limit`` cycles."""
    per = rounds // len(blocks)
    t0 = rdtsc()
    for i in range(warm + per * len(blocks)):
        j = i - warm
        if j >= 0 and j % per == 0:
            t1 = rdtsc()
            if j > 0:
                blocks[j // per - 1] = t1 - t0
            t0 = t1
        want = 2 * i + me
        t_wait = rdtsc()
        while load_acquire(buf, W_BALL) != want:
            if load_acquire(buf, W_FAIL) != 0 or rdtsc() - t_wait > limit:
                store_release(buf, W_FAIL, 1)
                return -1
        store_release(buf, W_BALL, want + 1)
    blocks[len(blocks) - 1] = rdtsc() - t0
    return 0


def cpu_pairs(topo, allowed) -> list[tuple[str, int, int]]:
    """(relation, cpu, cpu): the first pair of each relation (``RELATIONS``) among ``allowed``."""
    named = {"smt": "siblings", "package": "same socket", "node": "across sockets", "remote": "across sockets"}
    cpus = sorted(c for c in allowed if c in topo.cpus)
    found = {}
    for i, x in enumerate(cpus):
        for y in cpus[i + 1:]:
            rel = named[topo.relation(x, y)]      # the topology's own relation (testbed/topology.py)
            found.setdefault(rel, (rel, x, y))
    return [found[r] for r in RELATIONS if r in found]


def _play(buf, me, cpu, limit) -> int:
    os.sched_setaffinity(0, {cpu})
    return int(pingpong(buf, me, ROUNDS, WARM, limit, buf[W_BLOCKS:W_BLOCKS + BLOCKS]))


def measure_pair(a: int, b: int, hz: float, repeats: int = REPEATS) -> dict:
    """One-way transfer cycles between CPUs ``a`` and ``b``: median and half range over ``repeats``."""
    size = (W_BLOCKS + BLOCKS) * 8
    mm = mmap.mmap(-1, size, flags=mmap.MAP_SHARED | mmap.MAP_ANONYMOUS)
    buf = np.frombuffer(mm, dtype=np.int64)
    pingpong(buf, 0, 0, 0, 1, buf[W_BLOCKS:W_BLOCKS + 1])      # compiled (or loaded) before the fork
    limit = int(hz)                          # one second without an answer: the partner is gone
    samples = []
    try:
        for _ in range(repeats):
            buf[:] = 0
            pids = []
            for me, cpu in ((1, b), (0, a)):
                pid = os.fork()
                if pid == 0:                 # pragma: no cover - the child
                    code = 1
                    try:
                        code = 0 if _play(buf, me, cpu, limit) == 0 else 1
                    finally:
                        os._exit(code)
                pids.append(pid)
            deadline = time.monotonic() + TIMEOUT_S
            codes = {}
            while len(codes) < len(pids):
                for pid in pids:
                    if pid not in codes:
                        done, status = os.waitpid(pid, os.WNOHANG)
                        if done:
                            codes[pid] = os.waitstatus_to_exitcode(status)
                if time.monotonic() > deadline:
                    raise RuntimeError(f"ping-pong between CPUs {a} and {b} did not finish in {TIMEOUT_S:g} s")
                time.sleep(0.002)
            blocks = buf[W_BLOCKS:W_BLOCKS + BLOCKS]
            if any(codes.values()) or np.any(blocks <= 0):
                raise RuntimeError(f"ping-pong between CPUs {a} and {b} failed (exit codes {sorted(codes.values())})")
            samples.append(float(np.median(blocks)) / (2 * (ROUNDS // BLOCKS)))
    finally:
        for pid in locals().get("pids", []):
            try:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
        del buf                              # the anonymous mapping goes with its last view
    return {"cpus": [a, b], "cycles": stats.median(samples), "spread": stats.mad(samples),
            "samples": [round(x, 1) for x in samples]}


def measure(topo, allowed, hz: float) -> list[dict]:
    """One ping-pong per relation the allowed CPUs offer; UsageError with one CPU only."""
    pairs = cpu_pairs(topo, allowed)
    if not pairs:
        raise UsageError(f"a cache-line ping-pong needs two CPUs, and only CPU {allowed[0]} is allowed; "
                         "give --cpus two or more")
    return [dict(relation=rel, **measure_pair(x, y, hz)) for rel, x, y in pairs]
