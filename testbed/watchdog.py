"""The watchdog of a run: tells stopped, hung and starved vCPUs apart, finds dead ones, and
says what a stalled one was doing (``describe_stall``).

The harness polls it while the vCPUs run (``harness._measure``) and while they stop
(``harness._drain``); ``probe`` and ``clock`` are parameters so that tests can drive it
with fake processes and a fake clock.
"""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import psutil

from testbed.workers import vcpu as vcpu_worker

from . import abi, oracle
from . import variants as registry

STALL_S = 1.0          # a vCPU whose pulse is older than this is looked at: stopped, hung or starved
HUNG_CPU_S = 0.5       # ... hung if it got this much CPU since, without a single operation


def death(v: int, proc, views, when: str, cfg, module=None) -> dict:
    """What a vCPU process that exited tells: killed by a signal, stopped by its kernel's status
    (with what the design says of it, ``module.failure_detail``), or exited otherwise."""
    code = proc.exitcode
    row = views["stats"][v]
    if code is not None and code < 0:
        sig = signal.Signals(-code).name
        return {"kind": "killed", "vcpu": v, "signal": sig, "message": f"vCPU {v} was killed by {sig} {when}"}
    if code == vcpu_worker.EXIT_KERNEL:
        status = int(row[abi.S_STATUS])
        geometry = (f"variant {cfg.variant}, MAPCACHE_VCPU_ENTRIES {cfg.entries}, MAPHASH_ENTRIES "
                    f"{cfg.hash_entries}, PAGING_LEVELS {cfg.levels}, workload {cfg.workload}, seed {cfg.seed}")
        name = abi.STATUS_NAMES.get(status, str(status))
        live = oracle.live(views, v)
        detail = (module or registry.get(cfg.variant).module).failure_detail(cfg, row)
        return {"kind": name, "vcpu": v, "status": status, "live": live,
                "message": f"vCPU {v} stopped: {name}{': ' + detail if detail else ''} with {len(live)} live "
                           f"mappings ({geometry})"}
    return {"kind": "exited", "vcpu": v, "exitcode": code, "message": f"vCPU {v} exited with status {code} {when}"}


def proc_probe(pid: int) -> tuple[str, float]:
    """(state letter, CPU seconds used) of a process, from /proc; ("gone", 0) if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return "gone", 0.0
    fields = text[text.rindex(")") + 2:].split()
    return fields[0], (int(fields[11]) + int(fields[12])) / _CLK_TCK


_CLK_TCK = os.sysconf("SC_CLK_TCK")


class Watchdog:
    """Tells stopped, hung and starved vCPUs apart; finds dead ones.

    The pulse is ``S_PROGRESS``, which the kernel bumps after every operation
    and on every round of a lock spin: a vCPU waiting behind a lock holder
    still beats. A running vCPU whose pulse has not moved for ``stall_s`` is
    looked at through the CPU time its process got since (``probe``):

    - stopped (SIGSTOP, state T): ``stalled``, a failure;
    - got ``HUNG_CPU_S`` of CPU and did not complete one operation: ``hung``,
      a failure;
    - got no CPU: starved by the host's scheduler. That is a measured figure
      (the longest starvation per vCPU, ``starved``), never a failure.

    A vCPU that is not running (paused, descheduled by ``--sched hypervisor``,
    done) is not watched: the testbed knows why it does not beat. A descheduled
    vCPU that was handed a CPU is watched: it must take it.
    """

    def __init__(self, procs, views, cfg, stall_s: float = STALL_S, clock=time.monotonic, probe=proc_probe,
                 module=None):
        self.procs, self.views, self.cfg, self.stall_s, self.clock, self.probe = procs, views, cfg, stall_s, clock, probe
        self.module = module
        n = len(procs)
        now = clock()
        self.pulse = views["stats"][:n, abi.S_PROGRESS].copy()
        self.since = np.full(n, now)             # when each pulse last moved (or the vCPU stopped running)
        self.starved = np.zeros(n)               # longest time each vCPU went without progress, s
        self.cpu_at = {}                         # vCPU -> CPU seconds when it was first looked at

    def check(self):
        for v, proc in enumerate(self.procs):
            if proc.exitcode is not None:
                return death(v, proc, self.views, "during the run", self.cfg, self.module)
        return self.stalls()

    def stalls(self, among=None):
        """The first stopped or hung vCPU (of ``among``, default all), or None."""
        stats = self.views["stats"]
        n = len(self.procs)
        now = self.clock()
        pulse = stats[:n, abi.S_PROGRESS].copy()
        # Watched: running vCPUs, and descheduled ones that were handed a CPU (they must take it).
        watched = stats[:n, abi.S_STATE] == abi.W_RUNNING
        if "mail" in self.views:
            watched |= (stats[:n, abi.S_STATE] == abi.W_DESCHED) & (self.views["mail"][:n, abi.M_GRANT] != 0)
        moved = (pulse != self.pulse) | ~watched
        self.pulse = pulse
        self.since[moved] = now
        for v in np.flatnonzero(moved):
            self.cpu_at.pop(int(v), None)
        gap = now - self.since
        np.maximum(self.starved, gap, out=self.starved)
        for v in np.flatnonzero(gap > self.stall_s):
            v = int(v)
            if among is not None and v not in among:
                continue
            pid = self.procs[v].pid
            letter, cpu = self.probe(pid)
            if letter in ("T", "t"):
                return {"kind": "stalled", "vcpu": v, "pid": pid,
                        "message": f"vCPU {v} (pid {pid}) is stopped and made no progress for {gap[v]:.1f} s"}
            base = self.cpu_at.setdefault(v, cpu)
            if cpu - base >= HUNG_CPU_S:
                return {"kind": "hung", "vcpu": v, "pid": pid,
                        "message": f"vCPU {v} (pid {pid}) ran {cpu - base:.2f} s of CPU without completing an "
                                   f"operation (no progress for {gap[v]:.1f} s)"}
        return None


def describe_stall(procs, views, cfg, v: int, module=None) -> dict:
    """The state of a stalled vCPU's process, and what the variant says it holds."""
    try:
        status = psutil.Process(procs[v].pid).status()
    except psutil.Error:
        status = "gone"
    out = {"process_status": status}
    out.update((module or registry.get(cfg.variant).module).describe_stall(views, cfg, v))
    spinning = [u for u in range(len(procs)) if u != v and views["stats"][u, abi.S_STATE] == abi.W_RUNNING]
    out["others_running"] = len(spinning)
    return out
