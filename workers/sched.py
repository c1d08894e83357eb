"""The vCPU side of ``--sched hypervisor``: a hypervisor's scheduler, run by the vCPUs themselves.

Model. The allowed host CPUs are the physical CPUs (pCPUs); at most one vCPU
runs on each at a time. All vCPUs share one FIFO run queue, as Xen's credit2
shares one run queue per group of pCPUs. A running vCPU keeps its pCPU for a
time slice (``--timeslice-us``); when the slice is used up and another vCPU is
waiting, it hands its pCPU to the head of the queue, queues itself at the
tail, and blocks on a futex until a pCPU is handed back to it. With nobody
waiting it simply starts a new slice.

A hypervisor never deschedules a pCPU in the middle of its own code: Xen runs
``map_domain_page`` with interrupts off and switches vCPUs only on the way
between guest and hypervisor. Here the switch happens only between two kernel
calls, and the kernel returns only between two operations, so a vCPU is never
descheduled inside a map or an unmap or while it holds a lock: ``S_BAD_SWITCH``
counts every switch that finds otherwise (the oracle fails the run on it).

Every switch in is a context switch: the vCPU's TLB is flushed whole, which
ticks the TLB clock, as Xen's write of CR3 does. Each vCPU accounts its own
time on a pCPU, its time waiting for one, its longest wait and its switches.
"""

from __future__ import annotations

import os
import time

from testbed.shared import futex
from testbed import abi, variants


class HypervisorSched:
    def __init__(self, views, p, cfg, vcpu: int, lock, flush, module=None):
        self.vcpu = vcpu
        self.ctl, self.runq, self.mail = views["ctl"], views["runq"], views["mail"]
        self.row = views["stats"][vcpu]
        self.pids = views["stats"][:, abi.S_PID]
        self.my_mail = self.mail[vcpu]
        self.lock = lock
        self.flush = flush
        self.capacity = int(p[abi.P_VCPUS])
        self.slice_ns = int(p[abi.P_TIMESLICE_NS])
        self.cycles_per_ns = int(p[abi.P_TSC_KHZ]) / 1e6
        module = module or variants.get(cfg.variant).module     # the run plan's, from the harness
        self.holder = lambda: module.lock_holder(views, cfg)
        self.cpu = None
        self.slice_start = self.slice_end = 0

    # --- the slice ------------------------------------------------------------------
    def begin(self) -> None:
        """At the start: run if the parent gave this vCPU a pCPU, else wait in the queue."""
        t = time.monotonic_ns()
        grant = int(self.my_mail[abi.M_GRANT])
        if grant:
            self.my_mail[abi.M_GRANT] = 0
            self._run_on(grant - 1, t)
        else:
            self._wait_for_cpu(t, switch=False)

    def chunk_cycles(self, chunk_cycles: int) -> int:
        """The kernel's time budget for the next call: the chunk, or what is left of the slice."""
        left = self.slice_end - time.monotonic_ns()
        return max(1, min(chunk_cycles, int(left * self.cycles_per_ns)))

    def tick(self) -> None:
        """Between two kernel calls: give the pCPU away if the slice is over and someone waits."""
        now = time.monotonic_ns()
        if now < self.slice_end:
            return
        rq = self.runq
        if rq[abi.RQ_TAIL] == rq[abi.RQ_HEAD]:      # nobody waits: a new slice (a racy peek is enough)
            self.row[abi.S_RUN_NS] += now - self.slice_start
            self.slice_start, self.slice_end = now, now + self.slice_ns
            return
        with self.lock:
            head, tail = int(rq[abi.RQ_HEAD]), int(rq[abi.RQ_TAIL])
            if head == tail:
                nxt = None
            else:
                nxt = int(rq[abi.RQ_RING + head % self.capacity])
                rq[abi.RQ_HEAD] = head + 1
                rq[abi.RQ_RING + tail % self.capacity] = self.vcpu
                rq[abi.RQ_TAIL] = tail + 1
        if nxt is None:
            self.slice_start, self.slice_end = now, now + self.slice_ns
            return
        self.check_boundary()
        self.row[abi.S_RUN_NS] += now - self.slice_start
        self.row[abi.S_STATE] = abi.W_DESCHED
        mail = self.mail[nxt]
        mail[abi.M_GRANT] = self.cpu + 1
        # Move the next vCPU onto this pCPU before waking it, so that it wakes where it will
        # run, not on its old pCPU beside the vCPU running there.
        try:
            os.sched_setaffinity(int(self.pids[nxt]), {self.cpu})
        except OSError:
            pass
        futex.bump_and_wake(mail, abi.M_WAKE)
        self._wait_for_cpu(now, switch=True)

    def check_boundary(self) -> None:
        """A switch must find the vCPU between operations: no mapping held, no lock held."""
        if self.row[abi.S_LIVE] != 0 or self.holder() == self.vcpu:
            self.row[abi.S_BAD_SWITCH] += 1

    def end(self) -> None:
        if self.cpu is not None and self.row[abi.S_STATE] != abi.W_DESCHED:
            self.row[abi.S_RUN_NS] += time.monotonic_ns() - self.slice_start

    # --- waiting and resuming -------------------------------------------------------
    def _wait_for_cpu(self, t_out: int, switch: bool) -> None:
        self.row[abi.S_STATE] = abi.W_DESCHED
        mail, ctl = self.my_mail, self.ctl
        while True:
            seq = int(mail[abi.M_WAKE])
            grant = int(mail[abi.M_GRANT])
            if grant or ctl[abi.C_STOP]:
                break
            futex.wait(mail, abi.M_WAKE, seq)
        t_in = time.monotonic_ns()
        if not grant and ctl[abi.C_STOP_NS]:
            t_in = min(t_in, int(ctl[abi.C_STOP_NS]))    # the wait ended with the stop, not when we woke
        waited = max(0, t_in - t_out)
        self.row[abi.S_WAIT_NS] += waited
        if waited > self.row[abi.S_MAX_WAIT_NS]:
            self.row[abi.S_MAX_WAIT_NS] = waited
        if not grant:            # told to stop while waiting
            self.cpu = None
            return
        mail[abi.M_GRANT] = 0
        self.row[abi.S_STATE] = abi.W_RUNNING
        self.row[abi.S_SWITCHES] += 1
        self._run_on(grant - 1, t_in)
        self.flush()             # a context switch writes CR3: a full TLB flush, a tick of the TLB clock

    def _run_on(self, cpu: int, t: int) -> None:
        if cpu != self.cpu:
            try:
                os.sched_setaffinity(0, {cpu})
            except OSError:
                pass
            self.row[abi.S_CORE] = cpu
        self.cpu = cpu
        self.slice_start, self.slice_end = t, t + self.slice_ns
