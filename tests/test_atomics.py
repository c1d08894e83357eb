"""testbed.atomics: results in compiled code and in the Python fallbacks, and atomicity across processes;
the shipped locks (testbed/locks.py) keeping a plain counter exact across processes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap

import multiprocess as mp
import numba
import numpy as np
import pytest

from testbed.shared import Arena, Field, Layout
from testbed.atomics import cas, cpu_relax, exchange, fetch_add, fetch_and, fetch_or, load_acquire, rdtsc, store_release
from testbed import abi, dom_layout, locks
from testbed.locks import acquire, release

from conftest import REPO, cli_env, segments_owned_by

N_STATS = abi.N_STATS  # a stats row as the harness lays it out
DOM_WORDS = dom_layout.DOM_WORDS + 8 * 2    # the fixed words, then an mcs node per process


# --- single process: every operation, compiled and in the fallback ---------------------


def exercise(a, out):
    """Every atomic on a[0..3]; what each returned, and the array after it, go to ``out``."""
    a[0] = 5
    out[0] = fetch_add(a, 0, 3)           # 5 -> 8
    out[1] = a[0]
    out[2] = fetch_add(a, 0, -10)         # 8 -> -2
    out[3] = a[0]
    a[1] = 0b1010
    out[4] = fetch_or(a, 1, 0b0101)       # 10 -> 15
    out[5] = a[1]
    out[6] = fetch_and(a, 1, 0b0110)      # 15 -> 6
    out[7] = a[1]
    out[8] = fetch_and(a, 1, ~2)          # 6 -> 4 (negative mask)
    out[9] = a[1]
    out[10] = exchange(a, 2, 77)          # old a[2] -> 77
    out[11] = a[2]
    out[12] = cas(a, 2, 77, 99)           # succeeds: 77 -> 99
    out[13] = a[2]
    out[14] = cas(a, 2, 77, 11)           # fails: stays 99
    out[15] = a[2]
    store_release(a, 3, -123)
    out[16] = load_acquire(a, 3)
    out[17] = a[3]
    cpu_relax()
    t0 = rdtsc()
    for _ in range(1000):
        cpu_relax()
    t1 = rdtsc()
    out[18] = t0
    out[19] = t1


EXPECTED = [5, 8, 8, -2, 10, 15, 15, 6, 6, 4, 42, 77, 77, 99, 99, 99, -123, -123]

exercise_jit = numba.njit(exercise)


@pytest.mark.parametrize("dtype", [np.int64, np.int32])
@pytest.mark.parametrize("compiled", [True, False], ids=["njit", "fallback"])
def test_every_atomic_gives_the_right_result(dtype, compiled):
    a = np.zeros(4, dtype=dtype)
    a[2] = 42
    out = np.zeros(20, dtype=np.int64)
    (exercise_jit if compiled else exercise)(a, out)
    assert out[:18].tolist() == EXPECTED
    assert a.tolist() == [-2, 4, 99, -123]
    assert a.dtype == dtype
    assert out[18] > 0 and out[19] >= out[18]


def test_the_fallbacks_are_the_plain_functions():
    """Outside compiled code the atomics are the Python functions themselves, returning the old value."""
    for f in (cas, cpu_relax, exchange, fetch_add, fetch_and, fetch_or, load_acquire, rdtsc, store_release):
        assert type(f).__name__ == "function" and f.__module__ == "testbed.atomics"
    a = np.array([7, 1], dtype=np.int32)
    assert fetch_add(a, 0, 2) == 7 and a[0] == 9 and a.dtype == np.int32
    assert cas(a, 1, 1, 5) == 1 and a[1] == 5
    assert cpu_relax() is None
    assert isinstance(rdtsc(), int)


@numba.njit
def _row_ops(a2, v):
    fetch_add(a2[v], 3, 1)
    fetch_or(a2[v], 0, 4)
    return exchange(a2[v], 1, 9)


def test_atomics_on_a_row_of_a_2d_array():
    a2 = np.zeros((3, 8), dtype=np.int64)
    a2[1, 1] = 5
    assert _row_ops(a2, 1) == 5
    assert a2[1].tolist() == [4, 9, 0, 1, 0, 0, 0, 0]
    assert not a2[0].any() and not a2[2].any()


def test_compiled_code_uses_atomic_instructions():
    """The overloads emit atomic instructions, not the fallback's plain load and store.

    LLVM turns fetch_or / fetch_and whose old value is used into a cmpxchg loop,
    so there are five cmpxchg: three loops (one fetch_or, two fetch_and) and two for cas.
    """
    exercise_jit(np.zeros(4, np.int64), np.zeros(20, np.int64))
    sig = [s for s in exercise_jit.signatures if s[0].dtype == numba.int64][0]
    ir = exercise_jit.inspect_llvm(sig)
    body = ir[ir.index("define"):]
    assert re.search(r"atomicrmw add ptr .* seq_cst", body)
    assert re.search(r"atomicrmw xchg ptr .* seq_cst", body)
    assert len(re.findall(r"= cmpxchg ptr .* seq_cst seq_cst", body)) == 5
    assert re.search(r"load atomic i64, ptr .* acquire", body)
    assert re.search(r"store atomic i64 .* release", body)
    assert "llvm.x86.sse2.pause" in body and "llvm.readcyclecounter" in body
    asm = exercise_jit.inspect_asm(sig)
    assert len(re.findall(r"lock\s+xaddq", asm)) == 2
    assert len(re.findall(r"lock\s+cmpxchgq", asm)) == 5
    assert re.search(r"\bxchgq\b", asm) and re.search(r"\bpause\b", asm) and re.search(r"\brdtsc", asm)


def test_fallback_mode_runs_a_kernel_without_the_jit():
    """With NUMBA_DISABLE_JIT=1 a kernel using the atomics (and the shipped ticket lock) runs as Python."""
    code = textwrap.dedent("""
        import numba, numba.core.dispatcher, numpy as np
        from numba.core import config
        assert config.DISABLE_JIT
        from testbed.atomics import cas, cpu_relax, exchange, fetch_add, fetch_and, fetch_or, load_acquire, rdtsc, store_release
        from testbed.dom_layout import LAYOUT_XEN, X_LOCK
        from testbed.locks import LOCK_TICKET, acquire, release, ticket_halves
        from testbed import abi

        @numba.njit
        def k(a, dom, srow, n):
            for _ in range(n):
                my = acquire(dom, srow, 0, LOCK_TICKET, LAYOUT_XEN)
                a[0] += 1
                release(dom, my, srow, 0, 0, LOCK_TICKET, LAYOUT_XEN)
                fetch_add(a, 1, 2)
                fetch_or(a, 2, 1 << (_ % 8))
                fetch_and(a, 3, ~1)
                exchange(a, 4, _)
                cas(a, 5, _, _ + 1)
                store_release(a, 6, load_acquire(a, 0))
                cpu_relax()
            return rdtsc()

        assert not isinstance(k, numba.core.dispatcher.Dispatcher), type(k)
        assert not isinstance(acquire, numba.core.dispatcher.Dispatcher), type(acquire)
        a = np.zeros(8, np.int64); a[3] = 7
        dom = np.zeros(64, np.int64); srow = np.zeros(abi.N_STATS, np.int64)
        t = k(a, dom, srow, 10)
        head, tail = ticket_halves(dom[X_LOCK])
        print(a.tolist(), int(head), int(tail), int(srow[abi.S_LOCK_ACQ]), t > 0)
    """)
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                         env=cli_env({"NUMBA_DISABLE_JIT": "1"}))
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["[10,", "20,", "255,", "6,", "9,", "10,", "10,", "0]", "10", "10", "10", "True"]


FALLBACK_ACROSS_PROCESSES = textwrap.dedent("""
    import os
    import multiprocess as mp
    import numba
    from numba.core import config
    assert config.DISABLE_JIT
    from testbed.shared import Arena, Field, Layout
    from testbed.atomics import cpu_relax, fetch_add, load_acquire

    @numba.njit
    def count(ctr, sync, n):
        fetch_add(sync, 0, 1)
        while load_acquire(sync, 0) < 2:
            cpu_relax()
        for _ in range(n):
            fetch_add(ctr, 0, 1)

    lay = Layout((Field("ctr", "int64", (8,)), Field("sync", "int64", (8,))))
    arena = Arena.create(lay)
    try:
        def child(name, core):
            os.sched_setaffinity(0, {core})
            a = Arena.attach(name, lay)
            count(a["ctr"], a["sync"], N)
            a.close()
        cores = sorted(os.sched_getaffinity(0))[:2] * 2
        procs = [mp.get_context("fork").Process(target=child, args=(arena.name, cores[i])) for i in range(2)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
        assert [p.exitcode for p in procs] == [0, 0]
        print(int(arena["ctr"][0]))
    finally:
        arena.destroy()
""")


@pytest.mark.usefixtures("exclusive", "no_leftovers")
def test_fallback_fetch_add_is_atomic_across_forked_processes():
    """Under NUMBA_DISABLE_JIT the read-modify-writes share one lock across forked processes."""
    n = 20_000
    code = f"N = {n}\n" + FALLBACK_ACROSS_PROCESSES
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                         env=cli_env({"NUMBA_DISABLE_JIT": "1"}))
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.split()[-1]) == 2 * n
    assert "resource_tracker" not in out.stderr and "leaked" not in out.stderr, out.stderr


# --- across processes -------------------------------------------------------------------

LAYOUT = Layout((
    Field("ctr", "int64", (8,)),          # the shared counter, alone on its line
    Field("sync", "int64", (8,)),         # start barrier
    Field("dom", "int64", (DOM_WORDS,)),        # the lock's words, shared
    Field("own", "int64", (2, DOM_WORDS), per_vcpu=True),     # per process: a lock of its own, shared by nobody
    Field("times", "int64", (2, 2), per_vcpu=True),    # per process: loop start, loop end (TSC)
    Field("srow", "int64", (2, N_STATS), per_vcpu=True),
))

K_ATOMIC, K_RACY, K_LOCKED, K_OWN_LOCK = range(4)


@numba.njit
def _barrier(sync, parties):
    fetch_add(sync, 0, 1)
    while load_acquire(sync, 0) < parties:
        cpu_relax()


@numba.njit
def counting_loop(kind, n, ctr, sync, dom, times, srow, parties, who, lock, layout):
    """One process's share: ``n`` increments of ctr[0], of the kind asked for; under a lock, the shipped
    ``acquire``/``release`` of lock ``lock`` (LOCK_*) in domain layout ``layout`` (LAYOUT_*)."""
    _barrier(sync, parties)
    t0 = rdtsc()
    if kind == K_ATOMIC:
        for _ in range(n):
            fetch_add(ctr, 0, 1)
    elif kind == K_RACY:
        for _ in range(n):
            v = load_acquire(ctr, 0)
            store_release(ctr, 0, v + 1)
    else:
        # K_OWN_LOCK: the same code on a lock each process has to itself: a lock that does not lock
        for _ in range(n):
            my = acquire(dom, srow, who, lock, layout)
            ctr[0] += 1                 # plain, non-atomic read-modify-write
            release(dom, my, srow, 0, who, lock, layout)
    t1 = rdtsc()
    times[0] = t0
    times[1] = t1


def _compile_counting_loop():
    """Compile in the parent, so that the forked children start at once."""
    v = LAYOUT.views(bytearray(LAYOUT.size))
    v["sync"][0] = 0
    for kind in (K_ATOMIC, K_RACY, K_LOCKED, K_OWN_LOCK):
        dom = v["own"][0] if kind == K_OWN_LOCK else v["dom"]       # a row of a 2-D field: maybe another type
        counting_loop(kind, 1, v["ctr"], v["sync"], dom, v["times"][0], v["srow"][0], 0, 0, 0, 0)


def _child(name, layout, who, core, kind, n, lock, dlayout):
    os.sched_setaffinity(0, {core})
    arena = Arena.attach(name, layout)
    v = arena.views
    dom = v["own"][who] if kind == K_OWN_LOCK else v["dom"]
    counting_loop(kind, n, v["ctr"], v["sync"], dom, v["times"][who], v["srow"][who], 2, who, lock, dlayout)
    arena.close()


def _two_cores() -> list[int]:
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.skip(f"needs 2 CPUs, this process may use {cpus}")
    return cpus[:2]


def run_pair(kind: int, n: int, lock: str = "ticket", layout: str = "xen") -> dict:
    """Two forked processes pinned to two cores, each doing ``n`` increments; counts and loop intervals.
    Under a lock: ``lock`` (a LOCKS name) in domain layout ``layout`` (a DOM_LAYOUTS name)."""
    cores = _two_cores()
    _compile_counting_loop()
    arena = Arena.create(LAYOUT)
    procs = []
    try:
        assert arena.name in segments_owned_by(os.getpid())
        ctx = mp.get_context("fork")
        for who, core in enumerate(cores):
            p = ctx.Process(target=_child, args=(arena.name, LAYOUT, who, core, kind, n, locks.LOCKS.index(lock),
                                                 dom_layout.DOM_LAYOUTS.index(layout)), daemon=True)
            p.start()
            procs.append(p)
        for p in procs:
            p.join(120)
        assert [p.exitcode for p in procs] == [0, 0]
        v = arena.views
        times = v["times"][:, :2].tolist()
        overlap = min(t[1] for t in times) - max(t[0] for t in times)
        shortest = min(t[1] - t[0] for t in times)
        srow = v["srow"][:, :N_STATS]
        return {"count": int(v["ctr"][0]), "times": times, "overlap": overlap, "shortest": max(shortest, 1),
                "free": locks.is_free(v["dom"], layout, lock),
                "tickets": locks.ticket_snapshot(v["dom"], layout) if lock == "ticket" else None,
                "acquired": int(srow[:, abi.S_LOCK_ACQ].sum()), "contended": int(srow[:, abi.S_LOCK_CONTENDED].sum())}
    finally:
        for p in procs:
            if p.exitcode is None:
                p.kill()
                p.join(5)
        arena.destroy()


def overlapped(r: dict) -> bool:
    """Both loops ran at the same time for at least half of the shorter one."""
    return r["overlap"] >= r["shortest"] // 2


OVERLAP_TRIES = 12


def expect_lost_updates(kind: int, n0: int, run=None, **lock):
    """Retry until the two loops overlap; then updates must have been lost. Fails if they never overlap.

    ``n`` grows fourfold per try up to 64 times ``n0``, then stays there (a busy shared host can
    keep one process off its core for a while; a longer loop is more likely to meet the other).
    An overlapping run that lost nothing is tried again (two cores can take turns on the counter's
    line for a whole run); the test fails when no overlapping run of the tries lost an update.
    Mutation tried: ``overlapped`` returning False: fails after the last try, where it skipped before.
    """
    run = run or run_pair
    n, seen, met = n0, [], 0
    for _ in range(OVERLAP_TRIES):
        r = run(kind, n, **lock)
        seen.append((n, r["times"], r["overlap"], r["count"]))
        assert r["count"] >= n          # each process itself counts all of its own increments at least once
        if overlapped(r):
            met += 1
            if r["count"] < 2 * n:
                return r
            # Overlapping, and yet no increment lost: the two cores may have taken turns on the
            # counter's line the whole time. Another try, longer; a lock that locks never loses one.
        n = min(n * 4, 64 * n0)
    if met:
        pytest.fail(f"no update lost in {met} overlapping runs of {OVERLAP_TRIES} "
                    f"(n, TSC intervals, overlap, count): {seen}")
    pytest.fail(f"the two processes never ran at the same time in {OVERLAP_TRIES} tries "
                f"(n, TSC intervals, overlap, count): {seen}")


def test_expect_lost_updates_fails_when_the_processes_never_overlap():
    """A pair that never overlaps is a failure, not a skip (the check cannot pass without meeting)."""
    calls = []

    def apart(kind, n):
        calls.append(n)
        return {"count": 2 * n, "times": [[0, 10], [20, 30]], "overlap": -10, "shortest": 10}

    with pytest.raises(pytest.fail.Exception, match="never ran at the same time"):
        expect_lost_updates(K_RACY, 100, run=apart)
    assert len(calls) == OVERLAP_TRIES and max(calls) == 6400


@pytest.mark.usefixtures("exclusive", "no_leftovers")
def test_fetch_add_across_two_pinned_processes_is_exact():
    n = 1_000_000
    r = run_pair(K_ATOMIC, n)
    assert r["count"] == 2 * n, r


@pytest.mark.usefixtures("exclusive", "no_leftovers")
def test_plain_read_modify_write_loses_updates_when_processes_overlap():
    """The control for the test above: without atomicity the same harness sees lost updates."""
    expect_lost_updates(K_RACY, 1_000_000)


LOCK_CASES = [(lock, layout) for lock in locks.LOCKS for layout in dom_layout.DOM_LAYOUTS]


@pytest.mark.usefixtures("exclusive", "no_leftovers")
@pytest.mark.parametrize("lock,layout", LOCK_CASES, ids=[f"{lk}-{ly}" for lk, ly in LOCK_CASES])
def test_shipped_lock_keeps_a_plain_counter_exact(lock, layout):
    """``locks.acquire``/``release``, the code locked runs, around a plain increment in two processes.

    Mutation tried: ``ticket_lock`` returning at once (no spin): the xen case loses increments."""
    n = 200_000 if (lock, layout) == ("ticket", "xen") else 50_000
    r = run_pair(K_LOCKED, n, lock, layout)
    assert r["count"] == 2 * n, r
    assert r["free"] and r["acquired"] == 2 * n, r      # every acquisition released, the owner word cleared
    if lock == "ticket":
        assert r["tickets"] == (2 * n, 2 * n), r        # every ticket taken was served
    if overlapped(r):
        assert r["contended"] > 0                       # the two really met at the lock


@pytest.mark.usefixtures("exclusive", "no_leftovers")
@pytest.mark.parametrize("lock", locks.LOCKS)
def test_a_lock_that_does_not_lock_loses_increments(lock):
    """The control for the test above: the same shipped code, each process on a lock of its own (so
    nothing excludes the other), in the same harness, loses updates."""
    expect_lost_updates(K_OWN_LOCK, 200_000, lock=lock, layout="xen")
