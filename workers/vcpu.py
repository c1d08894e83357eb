"""The vCPU side: one forked process per vCPU, pinned to its host CPU.

A worker dies with its parent (PR_SET_PDEATHSIG, and a check that the parent
is still the one that forked it), pins itself, attaches the arena by name,
says it is ready (one byte down a pipe), sleeps until the start, then runs the
compiled kernel in chunks of about ``--chunk-ms`` (the kernel bounds each call
by p[P_CHUNK_CYCLES]), checking the stop flag and publishing a heartbeat
between chunks, never per operation. It leaves its counters, status, CPU time,
memory and context-switch counts in its own row of ``stats`` and exits. Ctrl-C
belongs to the parent: a worker ignores SIGINT and stops when told.

Every wait of the worker's own (the start, a stutter pause, a wait for a CPU
under ``--sched hypervisor``) sleeps on a futex of the arena: hundreds of
waiting vCPUs cost no CPU. Under ``--sched hypervisor`` the worker gives its
CPU away only between two kernel calls, that is between two operations, never
inside a map or unmap and never holding a lock (``workers.sched``).
"""

from __future__ import annotations

import ctypes
import os
import resource
import signal
import time

from testbed.shared import Arena, futex
from testbed import abi, kernels, latwatch
from testbed import variants as registry
from testbed.tlb import flush_all as tlb_flush_all
from testbed.tlb import make_tlb

from .sched import HypervisorSched

PR_SET_PDEATHSIG = 1
EXIT_ORPHANED = 3
EXIT_KERNEL = 4
USS_SAMPLE = 32


def die_with_parent(parent_pid: int) -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent_pid:        # the parent died before prctl took effect
        os._exit(EXIT_ORPHANED)


def wait_ctl(ctl, until) -> None:
    """Sleep on the control sequence word until ``until()`` holds (see shared.futex)."""
    while True:
        seq = int(ctl[abi.C_SEQ])
        if until():
            return
        futex.wait(ctl, abi.C_SEQ, seq)


def wait_paused(ctl, row) -> None:
    row[abi.S_STATE] = abi.W_PAUSED
    wait_ctl(ctl, lambda: not ctl[abi.C_PAUSE] or ctl[abi.C_STOP])
    row[abi.S_STATE] = abi.W_RUNNING


def unique_kib() -> int:
    """This process's private pages (USS), KiB, from /proc/self/smaps_rollup; -1 if unreadable."""
    try:
        with open("/proc/self/smaps_rollup") as f:
            total = 0
            for line in f:
                if line.startswith(("Private_Clean:", "Private_Dirty:")):
                    total += int(line.split()[1])
            return total
    except (OSError, ValueError):
        return -1


def main(arena_name, layout, p, vcpu, core, cfg, parent_pid, ready_fd=None, rq_lock=None, go_fds=None, module=None):
    """One vCPU's life; ``module``: the design's module, the run plan's (looked up by name without it)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    die_with_parent(parent_pid)
    if go_fds is not None:
        # Set up only once the parent has forked every vCPU (it closes its end of the pipe):
        # forking then never competes with the set-up of the vCPUs already forked.
        go_r, go_w = go_fds
        os.close(go_w)
        os.read(go_r, 1)
        os.close(go_r)
    t_entry = time.monotonic_ns()
    if core is not None:
        os.sched_setaffinity(0, {core})
    arena = Arena.attach(arena_name, layout)
    v = arena.views
    ctl, row = v["ctl"], v["stats"][vcpu]
    tlbv = make_tlb(int(p[abi.P_TLB_SETS]), int(p[abi.P_TLB_WAYS]))
    rng = kernels.seed_state(cfg.seed, vcpu)
    args = abi.kernel_args(v, p, tlbv, rng)
    module = module or registry.get(cfg.variant).module
    run_ops = module.runner(cfg)     # the compiled loop, or a native design's C loop
    row[abi.S_PID] = os.getpid()
    row[abi.S_CORE] = -1 if core is None else core
    row[abi.S_HEARTBEAT] = time.monotonic_ns()
    row[abi.S_T_ENTRY] = t_entry
    row[abi.S_T_READY] = time.monotonic_ns()
    row[abi.S_STATE] = abi.W_READY
    if ready_fd is not None:
        os.write(ready_fd, b"r")
        os.close(ready_fd)

    sched = None
    if p[abi.P_SCHED] == abi.SCHED_HYPERVISOR:
        sched = HypervisorSched(v, p, cfg, vcpu, rq_lock, flush=lambda: tlb_flush_all(tlbv, p, v["dom"], v["vst"][vcpu], row),
                                module=module)
    wait_ctl(ctl, lambda: ctl[abi.C_START] or ctl[abi.C_STOP])
    row[abi.S_STATE] = abi.W_RUNNING
    t_started, cpu_started = time.monotonic_ns(), time.process_time_ns()
    if sched is not None:
        sched.begin()

    n = 1 << 30    # the kernel returns after chunk_ms (p[P_CHUNK_CYCLES]) of work
    status = abi.ST_OK
    mail = v["mail"][vcpu]
    chunk_cycles = int(p[abi.P_CHUNK_CYCLES])
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
        if sched is not None:
            p[abi.P_CHUNK_CYCLES] = sched.chunk_cycles(chunk_cycles)
        status = run_ops(n, vcpu, *args)
        row[abi.S_HEARTBEAT] = now = time.monotonic_ns()
        latwatch.fold(row, t_started, now)
        row[abi.S_CHUNKS] += 1
        if status != abi.ST_OK:
            break
        if sched is not None:
            sched.tick()

    if sched is not None:
        sched.end()
    row[abi.S_STATUS] = status
    usage = resource.getrusage(resource.RUSAGE_SELF)
    row[abi.S_NIVCSW] = usage.ru_nivcsw
    row[abi.S_NVCSW] = usage.ru_nvcsw
    row[abi.S_CPU_NS] = int((usage.ru_utime + usage.ru_stime) * 1e9)
    if sched is None:
        # Without our own scheduler, the host's decides: time on a CPU is CPU time, and
        # the rest of the wall time since the start was spent waiting for a CPU.
        ran = time.process_time_ns() - cpu_started
        row[abi.S_RUN_NS] = ran
        row[abi.S_WAIT_NS] = max(0, time.monotonic_ns() - t_started - ran)
    # Reading smaps_rollup costs ~10 ms of CPU: beyond 32 vCPUs, 32 evenly spaced ones measure.
    nv = int(p[abi.P_VCPUS])
    if nv <= USS_SAMPLE or vcpu % (nv // USS_SAMPLE) == 0:
        row[abi.S_USS_KB] = unique_kib()
    row[abi.S_STATE] = abi.W_DONE
    arena.close()
    # No interpreter teardown: hundreds of vCPUs exiting at once must not cost seconds.
    os._exit(EXIT_KERNEL if status != abi.ST_OK else 0)
