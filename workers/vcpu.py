"""The vCPU side: one forked process per vCPU, pinned to its host CPU.

A worker dies with its parent (PR_SET_PDEATHSIG, and a check that the parent
is still the one that forked it), pins itself, attaches the arena by name,
reports ready, waits for the start flag, then runs the compiled kernel in
chunks of about ``--chunk-ms`` (the kernel bounds each call by p[P_CHUNK_CYCLES]), checking the stop flag and publishing a heartbeat
between chunks, never per operation. It leaves its counters, status and
context-switch counts in its own row of ``stats`` and exits. Ctrl-C belongs to
the parent: a worker ignores SIGINT and stops when told.
"""

from __future__ import annotations

import ctypes
import os
import resource
import signal
import sys
import time

from shared import Arena
from testbed import abi, kernels
from testbed.tlb import flush_all as tlb_flush_all
from testbed.tlb import make_tlb

PR_SET_PDEATHSIG = 1
EXIT_ORPHANED = 3
EXIT_KERNEL = 4


def die_with_parent(parent_pid: int) -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent_pid:        # the parent died before prctl took effect
        os._exit(EXIT_ORPHANED)


def wait_paused(ctl, row) -> None:
    row[abi.S_STATE] = abi.W_PAUSED
    while ctl[abi.C_PAUSE] and not ctl[abi.C_STOP]:
        time.sleep(100e-6)
    row[abi.S_STATE] = abi.W_RUNNING


def main(arena_name, layout, p, vcpu, core, seed, parent_pid):
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    die_with_parent(parent_pid)
    if core is not None:
        os.sched_setaffinity(0, {core})
    arena = Arena.attach(arena_name, layout)
    v = arena.views
    ctl, row = v["ctl"], v["stats"][vcpu]
    tlbv = make_tlb(int(p[abi.P_TLB_SETS]), int(p[abi.P_TLB_WAYS]))
    rng = kernels.seed_state(seed, vcpu)
    args = (p, v["dom"], v["pte"], v["dbits"], v["vst"], v["frames"], v["expect"], v["stats"], v["hist"], v["live"], tlbv, rng)
    row[abi.S_PID] = os.getpid()
    row[abi.S_CORE] = -1 if core is None else core
    row[abi.S_HEARTBEAT] = time.monotonic_ns()
    row[abi.S_STATE] = abi.W_READY

    while ctl[abi.C_START] == 0 and ctl[abi.C_STOP] == 0:
        time.sleep(50e-6)
    row[abi.S_STATE] = abi.W_RUNNING

    n = 1 << 30    # the kernel returns after chunk_ms (p[P_CHUNK_CYCLES]) of work
    status = abi.ST_OK
    mail = v["mail"][vcpu]
    while ctl[abi.C_STOP] == 0:
        if ctl[abi.C_PAUSE]:
            wait_paused(ctl, row)
            continue
        if mail[abi.M_MOVES] != row[abi.S_MOVES_SEEN]:
            # The parent moved this vCPU to another host CPU: a context switch, so a full
            # TLB flush (a CR3 write), which ticks the TLB clock as Xen's does.
            row[abi.S_MOVES_SEEN] = mail[abi.M_MOVES]
            row[abi.S_CORE] = mail[abi.M_CORE]
            tlb_flush_all(tlbv, p, v["dom"], v["vst"][vcpu], row)
        status = kernels.run_ops(n, vcpu, *args)
        row[abi.S_HEARTBEAT] = time.monotonic_ns()
        row[abi.S_CHUNKS] += 1
        if status != abi.ST_OK:
            break

    row[abi.S_STATUS] = status
    usage = resource.getrusage(resource.RUSAGE_SELF)
    row[abi.S_NIVCSW] = usage.ru_nivcsw
    row[abi.S_NVCSW] = usage.ru_nvcsw
    row[abi.S_STATE] = abi.W_DONE
    arena.close()
    sys.exit(EXIT_KERNEL if status != abi.ST_OK else 0)
