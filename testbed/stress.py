"""Stress testing in the manner of locktorture: shuffle, stutter, long holds, faults.

A ``Stressor`` rides along a harness run (``harness.run(..., hooks=...)``):

- shuffle: every ``shuffle_s`` seconds each vCPU process is re-pinned to
  another allowed host CPU. The simulated TLB belongs to the vCPU (it lives in
  the process), so it moves with it; but on real hardware a vCPU that changes
  physical CPU is context-switched, and Xen's context switch writes CR3: a
  full TLB flush that ticks the TLB clock. The vCPU does exactly that when it
  sees it was moved, between two chunks of work.
- stutter: every ``stutter_s`` seconds all vCPUs pause together (between
  chunks) for ``stutter_s`` seconds, then resume together, which bunches up
  contention at the restart.
- quiescent checks: every ``check_s`` seconds (and during every stutter pause)
  all vCPUs are paused between operations, so the shared state is consistent,
  and the variant's invariant check and the frame-by-frame write check run on
  it. What they find is counted in ``checks.periodic_violations``.
- inject ``kill``: SIGKILL one vCPU (chosen from the seed) a third into the
  measured window. The watchdog names it and the signal; results are partial.
- inject ``stop``: SIGSTOP one vCPU: when the variant has a lock, one caught
  holding it (stopped, then checked; resumed and tried again if it had
  released it, for up to ``STOP_HOLDER_S``). The watchdog finds the
  stall from the progress pulse and says whether it holds the lock and how
  many wait behind it; the vCPU is then resumed or killed (``on_stall``).
"""

from __future__ import annotations

import os
import random
import signal
import time
from dataclasses import dataclass

from testbed.shared import futex

from . import abi, oracle
from . import variants as registry

FAULTS = ("kill", "stop")
ON_STALL = ("kill", "resume")
STOP_HOLDER_S = 2.0      # --inject stop: how long to try to catch a vCPU holding the lock


@dataclass(frozen=True)
class StressPlan:
    shuffle_s: float = 0.0
    stutter_s: float = 0.0
    check_s: float = 1.0
    inject: str | None = None
    inject_at_s: float | None = None      # default: a third into the measured window
    on_stall: str = "kill"


class Stressor:
    def __init__(self, plan: StressPlan, allowed_cpus: list[int], seed: int, clock=time.monotonic):
        self.plan = plan
        self.allowed = list(allowed_cpus)
        self.rng = random.Random(seed)
        self.clock = clock
        self.moves = 0
        self.stutters = 0
        self.checks_run = 0
        self.periodic: list[dict] = []
        self.first_violation_s: float | None = None
        self.injected: dict | None = None

    # --- harness hooks -------------------------------------------------------------
    def start(self, state, procs, views, t_start: float) -> None:
        self.state, self.procs, self.views, self.t0 = state, procs, views, t_start
        cfg = state.cfg
        p = self.plan
        self.next_shuffle = t_start + p.shuffle_s if p.shuffle_s > 0 else None
        self.next_stutter = t_start + p.stutter_s if p.stutter_s > 0 else None
        self.resume_at = None
        self.next_check = t_start + p.check_s if p.check_s > 0 else None
        # early enough that the watchdog has a second or more to find a stopped vCPU
        at = p.inject_at_s if p.inject_at_s is not None else cfg.warmup + cfg.duration / 3
        self.inject_at = t_start + at if p.inject else None
        self.rss_start = self.rss_now = _rss(procs)
        self.rss_t = t_start
        self.rss_series = [(0.0, self.rss_start)]    # every 30 s: a long run's memory must stay flat
        state.extra["stress"] = self.summary()

    def tick(self, now: float):
        self._step(now)
        if now - self.rss_t >= 1.0:
            self.rss_now, self.rss_t = _rss(self.procs), now
            if not self.rss_series or now - self.t0 - self.rss_series[-1][0] >= 30.0:
                self.rss_series.append((round(now - self.t0, 1), self.rss_now))
        self.state.extra["stress"] = self.summary()
        return None

    def _step(self, now: float) -> None:
        self._note_violations(now)
        if self.next_shuffle is not None and now >= self.next_shuffle:
            self._shuffle()
            self.next_shuffle = now + self.plan.shuffle_s
        if self.resume_at is not None:
            if now < self.resume_at:           # a stutter pause: everyone waits, the watchdog still looks
                return
            self._resume_all()
            self.resume_at = None
            self.next_stutter = now + self.plan.stutter_s
        elif self.next_stutter is not None and now >= self.next_stutter:
            self.stutters += 1
            self._quiescent(keep_paused=True)
            self.resume_at = now + self.plan.stutter_s
            return
        if self.next_check is not None and now >= self.next_check:
            self._quiescent()
            self.next_check = self.clock() + self.plan.check_s
        if self.inject_at is not None and now >= self.inject_at:
            self.inject_at = None
            self._inject()

    def stall(self, failure: dict) -> None:
        pid = self.procs[failure["vcpu"]].pid
        action = self.plan.on_stall
        try:
            os.kill(pid, signal.SIGCONT if action == "resume" else signal.SIGKILL)
        except ProcessLookupError:
            pass
        failure["action"] = "resumed" if action == "resume" else "killed"
        failure["message"] += f"; the vCPU was {failure['action']}"

    # --- the parts ----------------------------------------------------------------
    def _note_violations(self, now: float) -> None:
        if self.first_violation_s is not None:
            return
        if oracle.kernel_violations(self.views["stats"], len(self.procs)) > 0 or any(
            int(d.get("violations", 0)) > 0 for d in self.periodic
        ):
            self.first_violation_s = now - self.t0

    def _shuffle(self) -> None:
        mail = self.views["mail"]
        cpus = self.allowed
        shift = self.rng.randrange(1, len(cpus)) if len(cpus) > 1 else 0
        for v, proc in enumerate(self.procs):
            if proc.exitcode is not None:
                continue
            cur = int(self.views["stats"][v, abi.S_CORE])
            new = cpus[(cpus.index(cur) + shift) % len(cpus)] if cur in cpus else cpus[v % len(cpus)]
            try:
                os.sched_setaffinity(proc.pid, {new})
            except (ProcessLookupError, OSError):
                continue
            mail[v, abi.M_CORE] = new
            mail[v, abi.M_MOVES] += 1
            self.moves += 1

    def _pause_all(self, timeout_s: float = 0.25) -> bool:
        """Pause every vCPU between operations; False if they were not all paused in time.

        A vCPU descheduled by ``--sched hypervisor`` is between operations too,
        and stays asleep until a running vCPU hands it a CPU, which a paused one
        does not.
        """
        ctl, st = self.views["ctl"], self.views["stats"]
        ctl[abi.C_PAUSE] = 1
        futex.bump_and_wake(ctl, abi.C_SEQ)
        quiet = (abi.W_PAUSED, abi.W_DONE, abi.W_DESCHED)
        deadline = self.clock() + timeout_s
        while self.clock() < deadline:
            if all(p.exitcode is not None or st[v, abi.S_STATE] in quiet for v, p in enumerate(self.procs)):
                return True
            time.sleep(0.0005)
        return False

    def _resume_all(self) -> None:
        self.views["ctl"][abi.C_PAUSE] = 0
        futex.bump_and_wake(self.views["ctl"], abi.C_SEQ)

    def _quiescent(self, keep_paused: bool = False) -> None:
        """Pause everyone between operations and check the shared state; resume unless told not to."""
        try:
            if self._pause_all():
                found = oracle.quiescent(self.views, self.state.cfg)
                found["t"] = round(self.clock() - self.t0, 3)
                self.checks_run += 1
                if found["violations"]:
                    self.periodic.append(found)
        finally:
            if not keep_paused:
                self._resume_all()

    def _inject(self) -> None:
        fault = self.plan.inject
        if fault == "stop":
            victim, tries = self._stop_a_holder()
        else:
            victim, tries = self.rng.randrange(len(self.procs)), 1
            os.kill(self.procs[victim].pid, signal.SIGKILL)
        self.injected = {"fault": fault, "vcpu": victim, "pid": self.procs[victim].pid,
                         "t": round(self.clock() - self.t0, 3), "tries": tries}

    def _stop_a_holder(self, bound_s: float = STOP_HOLDER_S) -> tuple[int, int]:
        """SIGSTOP a vCPU; for a variant with a lock, one that holds it, if one is caught within ``bound_s``.

        The lock is held for tens of nanoseconds at a time, so a holder read
        from the owner word has usually released it by the time SIGSTOP lands.
        Instead: stop the vCPU last seen holding the lock (any vCPU if none
        was), wait until its process is stopped, and read the owner word again.
        If it holds the lock, keep it stopped; if not, resume it and try again.
        The watchdog cannot see these short stops: it runs in the same loop as
        this hook. After ``bound_s`` the last vCPU stopped stays stopped.
        """
        from . import harness

        cfg = self.state.cfg
        module = registry.get(cfg.variant).module
        n = len(self.procs)
        if not module.LOCKS:
            v = self.rng.randrange(n)
            os.kill(self.procs[v].pid, signal.SIGSTOP)
            return v, 1
        deadline = self.clock() + bound_s
        tries = 0
        while True:
            holder = module.lock_holder(self.views, cfg)
            v = holder if holder is not None else self.rng.randrange(n)
            pid = self.procs[v].pid
            os.kill(pid, signal.SIGSTOP)
            tries += 1
            until = self.clock() + 0.5
            while harness.proc_probe(pid)[0] not in ("T", "t", "gone") and self.clock() < until:
                time.sleep(0.0002)
            if module.lock_holder(self.views, cfg) == v or self.clock() >= deadline:
                return v, tries
            os.kill(pid, signal.SIGCONT)

    def summary(self) -> dict:
        return {
            "plan": {"shuffle_s": self.plan.shuffle_s, "stutter_s": self.plan.stutter_s, "check_s": self.plan.check_s,
                     "inject": self.plan.inject, "on_stall": self.plan.on_stall,
                     "long_hold": int(self.state.cfg.long_hold) if hasattr(self, "state") else 0},
            "moves": self.moves, "stutters": self.stutters, "quiescent_checks": self.checks_run,
            "periodic_findings": self.periodic[:20],
            "periodic_violations": int(sum(d["violations"] for d in self.periodic)),
            "first_violation_s": self.first_violation_s,
            "injected": self.injected,
            "rss_mb_start": getattr(self, "rss_start", None),
            "rss_mb_end": getattr(self, "rss_now", None),
            "rss_mb_series": getattr(self, "rss_series", []),
        }


def _rss(procs) -> float:
    """Resident memory of the parent and its vCPUs, MiB. Pages of the shared arena count in
    every process that touched them, so the sum rises while the vCPUs first touch the frames."""
    import psutil

    total = psutil.Process().memory_info().rss
    for p in procs:
        try:
            total += psutil.Process(p.pid).memory_info().rss
        except psutil.Error:
            pass
    return round(total / 2**20, 1)


def caught(result: dict) -> bool:
    """Whether a run under --inject caught its fault as it must: the run failed, and its failure
    names the vCPU that was killed or stopped. A run where nothing was injected (it ended first)
    or where the checks stayed silent did not."""
    inj = (result.get("stress") or {}).get("injected")
    f = result.get("failure") or {}
    return bool(inj) and result.get("verdict") == "FAILURE" and f.get("vcpu") == inj.get("vcpu")


def detection_seconds(result: dict) -> float | None:
    s = result.get("stress", {})
    return s.get("first_violation_s")


__all__ = ["FAULTS", "ON_STALL", "StressPlan", "Stressor", "caught", "detection_seconds"]


def run_series(todo, plan: StressPlan, cpus: list[int], replay_extra: tuple = (), quiet: bool = False):
    """Each (label, config) of ``todo`` in turn under ``plan``, as ``testbed stress`` runs them.

    Prints the per-second lines (unless ``quiet``) and each run's stress statistics; stops
    after a run that a signal interrupted. The runs, and one SUCCESS or FAILURE line per run
    (a failure with when it was detected, the seed and the command that replays it).
    """
    from . import harness
    from .textreport import print_sample, replay_command

    runs, lines = [], []
    for name, cfg in todo:
        print(f"--- {name}", flush=True)
        res = harness.run(cfg, on_sample=None if quiet else print_sample, hooks=Stressor(plan, cpus, cfg.seed))
        res["label"] = name
        runs.append(res)
        st = res.get("stress", {})
        f = res["fairness"]
        print(f"{name} stats: per-vCPU ops min {f['min_ops']:,} max {f['max_ops']:,}"
              f"{' STARVATION' if f['starvation'] else ''}; moves {st.get('moves', 0)}, stutters "
              f"{st.get('stutters', 0)}, quiescent checks {st.get('quiescent_checks', 0)}; RSS "
              f"{st.get('rss_mb_start')} -> {st.get('rss_mb_end')} MB")
        if res["verdict"] != "SUCCESS":
            bad = {k: v for k, v in res["checks"].items() if v and k != "violations"}
            why = res["failure"]["message"] if res["failure"] else f"checks {bad}"
            when = st.get("first_violation_s")
            if when is None and res["failure"]:
                when = res["failure"].get("t")
            lines.append(f"{name}: FAILURE: {why}" + (f"; detected after {when:.2f} s" if when is not None else "")
                         + f"; seed {cfg.seed}; replay: {replay_command(res['config'], 'stress', replay_extra)}")
        else:
            lines.append(f"{name}: SUCCESS")
        if res["interrupted"]:
            break
    return runs, lines


def run_all(todo, base, plan: StressPlan, cpus: list[int], quiet: bool = False) -> list[dict]:
    """``testbed stress``: echo every parameter, run ``todo`` (label, validated config) in turn
    (``run_series``), echo the parameters again and end with one SUCCESS or FAILURE line per run."""
    echo = (f"testbed stress: variants={','.join(label for label, _ in todo)} vcpus={base.vcpus} "
            f"duration={base.duration:g} warmup={base.warmup:g} seed={base.seed} workload={base.workload} "
            f"shuffle={plan.shuffle_s:g} stutter={plan.stutter_s:g} long_hold={base.long_hold} "
            f"check_every={plan.check_s:g} inject={plan.inject or 'none'} on_stall={plan.on_stall} "
            f"oversubscribe={base.oversubscribe}")
    print(echo, flush=True)
    runs, lines = run_series(todo, plan, cpus, replay_options(plan), quiet)
    print(echo.replace("testbed stress:", "testbed stress (end):"))
    for line in lines:
        print(line)
    return runs


def replay_options(plan: StressPlan) -> tuple:
    """The stress options a replay needs (the run options come from the config)."""
    out = [f"{flag} {val:g}" for flag, val in (("--shuffle", plan.shuffle_s), ("--stutter", plan.stutter_s)) if val]
    if plan.inject:
        out.append(f"--inject {plan.inject} --on-stall {plan.on_stall}")
    return tuple(out)


def check_shuffle(cfg, shuffle_s: float) -> None:
    """--shuffle re-pins vCPU processes: refused where the hypervisor scheduler places them itself."""
    from .config import sched_model
    from .errors import UsageError
    from .experiments import allowed_cpu_count

    if shuffle_s > 0 and sched_model(cfg, allowed_cpu_count(cfg)) == "hypervisor":
        raise UsageError(f"--shuffle {shuffle_s:g} re-pins vCPU processes, but with {cfg.vcpus} vCPUs on fewer "
                         f"CPUs the hypervisor scheduler places them itself (each switch is a move); pass "
                         f"--sched host, or no more vCPUs than CPUs")
