"""The parent side of a run: compile, lay out, fork, start, watch, stop, check.

The harness never knows which variant it runs (docs/variants.md, conventions 2): the variant is a
registry entry, looked up once into the run's plan (``runplan.py``), its id travels in the
parameter array, and its state is sized and initialised through the variant's own hooks.
The watchdog that tells stopped, hung and starved vCPUs apart is ``watchdog.py``.

Every exit path goes through one ``finally``: stop flag, SIGKILL for anything
still alive, reap every child, unlink the segment. SIGTERM is turned into an
exception so that it takes the same path as Ctrl-C.
"""

from __future__ import annotations

import os
import resource
import signal
import time
from dataclasses import dataclass, field

import multiprocess as mp
import numpy as np

from testbed.shared import Arena, futex, remove_stale
from testbed.workers import vcpu as vcpu_worker

from . import abi, jitcache, latwatch, limits, numa, oracle, results
from . import config as cfgmod
from . import runplan
from . import variants as registry
# build_layout and private_state: the arena of a run and one vCPU's private copy of it, which tests
# and variants/xen.py take from here
from .runplan import RunPlan, build_layout, compile_kernels, init_state, private_state  # noqa: F401
from .topology import allowed_cpus, host_topology, place, placement_rows
from .vproc import VcpuProcess, wait_any
from .watchdog import Watchdog, death, describe_stall, proc_probe

POLL_S = 0.05
READY_TIMEOUT_S = 60.0
# Every vCPU stops within JOIN_TIMEOUT_S of the stop flag, plus DRAIN_PER_SHARER_S for each
# vCPU beyond the first that shares a CPU (all of them must get the CPU to exit), plus
# DRAIN_PER_WAITER_S for each vCPU queued for the lock when the stop came (a convoy drains).
JOIN_TIMEOUT_S = 5.0
DRAIN_PER_SHARER_S = 0.05
DRAIN_PER_WAITER_S = 0.25


class Interrupted(Exception):
    """The run was stopped by a signal (Ctrl-C or SIGTERM)."""

    def __init__(self, signame: str):
        super().__init__(signame)
        self.signame = signame


@dataclass
class Sample:
    t: float                  # seconds since start
    ops: list[int]            # per-vCPU operations in this sample's interval
    warmup: bool

    def as_dict(self) -> dict:
        ops = self.ops
        return {"t": round(self.t, 3), "warmup": self.warmup, "total": int(sum(ops)),
                "min": int(min(ops)), "max": int(max(ops)), "per_vcpu": [int(x) for x in ops]}


@dataclass
class RunState:
    cfg: cfgmod.RunConfig
    cores: list
    sched: str = "dedicated"
    samples: list = field(default_factory=list)
    failure: dict | None = None
    interrupted: str | None = None
    startup: dict = field(default_factory=dict)
    window: tuple = (0.0, 0.0)
    ops_at: tuple = ((), ())
    extra: dict = field(default_factory=dict)     # what stress hooks add to the result
    fork_ns: list = field(default_factory=list)   # per vCPU: the parent's time in fork
    starved: np.ndarray | None = None             # per vCPU: longest time without progress, s
    stop: dict = field(default_factory=dict)
    victims: dict = field(default_factory=dict)   # vCPU -> why it was killed
    module: object = None                         # the variant's module: the run plan's
    lat: object = None                            # latwatch.Collector: the worst map latency per second

    def __post_init__(self):
        if self.module is None:                   # a state built by hand (tests), not by run()
            self.module = registry.get(self.cfg.variant).module


def raise_interrupted(signum, frame):
    raise Interrupted(signal.Signals(signum).name)


def run(plan: RunPlan | cfgmod.RunConfig, on_sample=None, t_launch: float | None = None, hooks=None) -> dict:
    """Run one experiment, of a plan (``runplan.plan``) or of a config planned here; a result
    dictionary (see ``testbed.results``).

    ``hooks``, if given, is told of the run as it goes (``testbed.stress``):
    ``start(state, procs, views, t_start)`` once the vCPUs are released,
    ``tick(now)`` on every poll (it may return a failure dictionary to end the
    run), and ``stall(failure)`` when the watchdog finds a vCPU that stopped.
    """
    t0 = time.perf_counter()
    if not isinstance(plan, RunPlan):
        plan = runplan.plan(plan)      # the run's one look-up of the registry
    cfg, module = plan.cfg, plan.module
    topo = host_topology()
    allowed = allowed_cpus(topo, cfg.cpus, ordered=cfg.placement == "given")
    cores = place(topo, allowed, cfg.vcpus, cfg.oversubscribe, cfg.placement)
    model = cfgmod.sched_model(cfg, len(allowed))
    layout = runplan.paged(plan.layout) if numa.spans_nodes(topo) else plan.layout
    limits.check_capacity(cfg.vcpus, layout.size)
    p = plan.params.copy()
    p[abi.P_SCHED] = {v: k for k, v in abi.SCHED_NAMES.items()}[model]
    # Under the host's scheduler a lock convoy can make one operation take a host time
    # slice per waiter: the chunk then reads the clock after every operation, so that a
    # vCPU sees the stop after the operation it is in, not sixteen convoys later. That
    # costs a cycle-counter read per operation (about 11 ns), only in that case.
    p[abi.P_CHECK_EVERY_OP] = int(model == "host" and bool(module.LOCKS))
    remove_stale()

    state = RunState(cfg, cores, sched=model, module=module)
    state.extra["vcpu_placement"] = placement_rows(topo, cores)
    t_compile = time.perf_counter()
    jitcache.prepare([plan])        # a cold cache: says so on stderr (a command's plan step did it for all its runs)
    compile_kernels(cfg, p, module)
    state.startup["compile_s"] = time.perf_counter() - t_compile

    arena = None
    mem_plan, mem_done = None, "not placed"
    procs = []
    old_term = signal.signal(signal.SIGTERM, raise_interrupted)
    ready_r = ready_w = go_r = go_w = None
    try:
        arena = Arena.create(layout)
        views = arena.views
        mem_plan = numa.Plan(cfg, topo, cores).build(views, layout, cfg.entries)
        mem_done = mem_plan.apply()            # before anything touches a page
        init_state(views, cfg, module)
        rq_lock = None
        if model == "hypervisor":
            rq_lock = mp.get_context("fork").Lock()
            _init_runqueue(views, cores, len(allowed))
        ready_r, ready_w = os.pipe()
        go_r, go_w = os.pipe()
        t_fork = time.perf_counter()
        for v, core in enumerate(cores):
            proc = VcpuProcess(
                target=vcpu_worker.main,
                args=(arena.name, layout, p, v, core, cfg, os.getpid(), ready_w, rq_lock, (go_r, go_w), module),
                name=f"testbed-vcpu{v}",
            )
            t = time.perf_counter_ns()
            proc.start()
            state.fork_ns.append(time.perf_counter_ns() - t)
            procs.append(proc)
        for fd in (ready_w, go_r, go_w):
            os.close(fd)          # the vCPUs set themselves up now (see workers.vcpu)
        ready_w = go_r = go_w = None
        state.startup["fork_s"] = time.perf_counter() - t_fork
        _wait_ready(state, procs, views, ready_r)
        state.startup["attach_s"] = time.perf_counter() - t_fork - state.startup["fork_s"]
        state.startup["total_s"] = time.perf_counter() - t0
        if t_launch is not None:
            state.startup["since_launch_s"] = time.perf_counter() - t_launch
        if state.failure is None:
            _measure(state, procs, views, on_sample, hooks=hooks)
        f = state.failure
        if f is not None and f["kind"] in ("stalled", "hung") and f.get("action") != "resumed":
            _kill(procs[f["vcpu"]])      # a stopped or hung process cannot heed the stop flag
            state.victims[f["vcpu"]] = f["kind"]
        elif f is not None and f["kind"] in ("killed", "exited"):
            state.victims[f["vcpu"]] = f["kind"]
        stop_all(views, len(procs))
        _drain(state, procs, views)
        _memory_placement(state, mem_plan, mem_done, views)
        return _result(state, procs, views, layout)
    except (KeyboardInterrupt, Interrupted) as e:
        state.interrupted = e.signame if isinstance(e, Interrupted) else "SIGINT"
        if arena is not None and arena.views:
            stop_all(arena.views, len(procs))
            _drain(state, procs, arena.views)
            _memory_placement(state, mem_plan, mem_done, arena.views)
            return _result(state, procs, arena.views, layout)
        raise
    finally:
        if arena is not None and arena.views:
            stop_all(arena.views, len(procs))
        _reap(procs, kill=True)
        for fd in (ready_r, ready_w, go_r, go_w):
            if fd is not None:
                os.close(fd)
        if arena is not None:
            arena.destroy()
        signal.signal(signal.SIGTERM, old_term)


def _memory_placement(state: RunState, plan, done: str, views) -> None:
    """Where the run's memory is, read back from the kernel (testbed/numa.py), into the result."""
    if plan is None or not views:
        return
    back = numa.read_back(plan, numa.touch_reader(views))
    back["binding"] = done
    if done == "one node":
        back["note"] = ("one NUMA node allowed: --numa-home, --frames-numa and the per-vCPU binding change nothing "
                        f"(node {plan.allowed_mems[0] if plan.allowed_mems else 0} only)")
    elif done != "bound":
        back["note"] = f"memory not bound ({done}): pages are where first touched"
    state.extra["memory_placement"] = back


def _init_runqueue(views, cores: list, cpus: int) -> None:
    """--sched hypervisor: the first vCPUs get a CPU each, the others queue in order."""
    mail, rq = views["mail"], views["runq"]
    running = min(cpus, len(cores))
    for v in range(running):
        mail[v, abi.M_GRANT] = cores[v] + 1
    for i, v in enumerate(range(running, len(cores))):
        rq[abi.RQ_RING + i] = v
    rq[abi.RQ_HEAD], rq[abi.RQ_TAIL] = 0, len(cores) - running


def release(views) -> None:
    """The start: every vCPU sleeping on the control word wakes up."""
    views["ctl"][abi.C_START] = 1
    futex.bump_and_wake(views["ctl"], abi.C_SEQ)


def stop_all(views, n: int) -> None:
    """The stop flag, and a wake-up for every vCPU asleep (at the start, paused or descheduled)."""
    ctl = views["ctl"]
    if ctl[abi.C_STOP]:
        return
    ctl[abi.C_STOP_NS] = time.monotonic_ns()
    ctl[abi.C_STOP] = 1
    futex.bump_and_wake(ctl, abi.C_SEQ)
    mail = views["mail"]
    for v in range(n):
        futex.bump_and_wake(mail[v], abi.M_WAKE)


def _wait_ready(state: RunState, procs, views, ready_fd: int) -> None:
    """Block until every vCPU has written its byte down the pipe, or one died, or the time-out."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    ready = 0
    fds = [ready_fd]
    while ready < len(procs):
        left = deadline - time.monotonic()
        if left <= 0:
            state.failure = {"kind": "start_timeout", "vcpu": None,
                             "message": f"{ready} of {len(procs)} vCPUs ready after {READY_TIMEOUT_S:.0f} s"}
            return
        exited, readable = wait_any(procs, left, fds)
        if exited:
            v = procs.index(exited[0])
            state.failure = death(v, exited[0], views, "before it was ready", state.cfg, state.module)
            return
        if readable:
            got = os.read(ready_fd, 4096)
            if not got:            # every writer gone: a death shows up among the sentinels
                fds = []
            ready += len(got)


def _ops(views, n: int) -> np.ndarray:
    return views["stats"][:n, abi.S_OPS].copy()


def _measure(state: RunState, procs, views, on_sample, clock=time.monotonic, sleep=time.sleep, hooks=None,
             probe=None) -> None:
    """Release the vCPUs, sample their counters once a second, watch them, stop at the end.

    The first ``warmup`` seconds are sampled and reported but not measured; the
    measured window runs from the first reading after the warm-up to the end.
    ``clock``, ``sleep`` and ``probe`` are parameters so that tests can drive a
    fake clock and fake processes.
    """
    cfg = state.cfg
    n = len(procs)
    state.lat = latwatch.Collector()
    release(views)
    t_start = clock()
    end = t_start + cfg.warmup + cfg.duration
    last_t, last_ops = t_start, _ops(views, n)
    next_sample = t_start + 1.0
    warm_ops, warm_t = (last_ops, t_start) if cfg.warmup == 0 else (None, None)
    watchdog = Watchdog(procs, views, cfg, clock=clock, probe=probe or proc_probe, module=state.module)
    if hooks is not None:
        hooks.start(state, procs, views, t_start)
    while True:
        now = clock()
        if warm_ops is None and now >= t_start + cfg.warmup:
            warm_ops, warm_t = _ops(views, n), now
        if now >= next_sample or now >= end:
            ops = _ops(views, n)
            s = Sample(now - t_start, list(ops - last_ops), warmup=last_t - t_start < cfg.warmup - 1e-6)
            state.samples.append(s)
            if state.lat is not None:
                state.lat.collect(views["stats"], n)
            if on_sample is not None:
                on_sample(s, cfg)
            last_t, last_ops = now, ops
            next_sample = max(next_sample + 1.0, now + 0.5)   # after a long pause, no burst of empty samples
        if now >= end:
            break
        bad = watchdog.check()
        if bad is not None and bad["kind"] == "stalled":
            detail = describe_stall(procs, views, cfg, bad["vcpu"], state.module)
            bad.update(detail)
            bad["message"] += " (" + ", ".join(f"{k.replace('_', ' ')}: {val}" for k, val in detail.items()) + ")"
            if hooks is not None:
                hooks.stall(bad)
        if bad is None and hooks is not None:
            bad = hooks.tick(now)
        if bad is not None:
            bad["t"] = round(now - t_start, 3)
            state.failure = bad
            break
        sleep(min(POLL_S, max(0.0, min(end, next_sample) - clock())))
    t_end = clock()
    if warm_ops is None:
        warm_ops, warm_t = _ops(views, n), t_end
    state.window = (warm_t - t_start, t_end - t_start)
    state.ops_at = (warm_ops, _ops(views, n))
    state.starved = watchdog.starved.copy()


def lock_waiters(views, cfg, module) -> int:
    """vCPUs queued for the variant's lock now (0 for a variant without one)."""
    return int(module.lock_waiters(views, cfg))


def stop_bound(vcpus: int, cpus: int, waiters: int) -> float:
    """Seconds every vCPU gets to stop after the stop flag (see JOIN_TIMEOUT_S)."""
    sharers = max(0, -(-vcpus // max(1, cpus)) - 1)
    return JOIN_TIMEOUT_S + DRAIN_PER_SHARER_S * sharers + DRAIN_PER_WAITER_S * waiters


def _drain(state: RunState, procs, views, clock=time.monotonic, probe=proc_probe) -> None:
    """After the stop flag: let every vCPU finish and exit; kill only the stopped or hung.

    A vCPU queued in a lock convoy when the stop came is neither: it finishes
    its operation when its turn comes. The deadline is ``stop_bound``; a vCPU
    still there after it is killed and reported as hung. Blocks on the
    processes' pidfds, never polls them.
    """
    t0 = clock()
    waiters = lock_waiters(views, state.cfg, state.module)
    deadline = t0 + stop_bound(len(procs), len(set(state.cores)), waiters)
    alive = {v for v, p in enumerate(procs) if p.exitcode is None}
    watchdog = Watchdog(procs, views, state.cfg, clock=clock, probe=probe, module=state.module)
    last_exit = t0
    while alive:
        now = clock()
        if now >= deadline:
            for v in alive:
                _kill(procs[v])
                state.victims.setdefault(v, "did not stop")
                if state.failure is None:
                    state.failure = {"kind": "hung", "vcpu": v, "pid": procs[v].pid,
                                     "message": f"vCPU {v} (pid {procs[v].pid}) did not stop within "
                                                f"{deadline - t0:.1f} s of the stop flag and was killed"}
            break
        exited, _ = wait_any([procs[v] for v in alive], min(POLL_S * 2, deadline - now))
        if exited:
            alive -= {v for v in alive if procs[v].exitcode is not None}
            last_exit = clock()
        # Among those still running, a stopped or hung vCPU will never stop by itself.
        bad = watchdog.stalls(among=alive)
        if bad is not None:
            v = bad["vcpu"]
            _kill(procs[v])
            alive.discard(v)
            state.victims.setdefault(v, bad["kind"])
            if state.failure is None:
                bad["message"] += "; found while stopping, killed"
                state.failure = bad
    state.stop = {"drain_s": round(last_exit - t0, 4), "lock_waiters_at_stop": waiters,
                  "deadline_s": round(deadline - t0, 2)}


def _reap(procs, kill: bool = False) -> list[int]:
    """Join every vCPU; SIGKILL those still running after the timeout. The vCPUs that needed it."""
    deadline = time.monotonic() + (0.0 if kill else JOIN_TIMEOUT_S)
    for proc in procs:
        proc.join(max(0.0, deadline - time.monotonic()))
    killed = []
    for v, proc in enumerate(procs):
        if proc.exitcode is None:
            killed.append(v)
            _kill(proc)
    return killed


def _kill(proc) -> None:
    try:
        os.kill(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.join(JOIN_TIMEOUT_S)


def _result(state: RunState, procs, views, layout) -> dict:
    cfg = state.cfg
    n = cfg.vcpus
    stats = views["stats"]
    lost, written, counted = oracle.lost_writes(views, cfg)
    vchecks = oracle.variant_checks(views, cfg, victims=state.victims, module=state.module)
    exited = all(p.exitcode is not None for p in procs)
    runtime = {
        "sched": {"model": state.sched, "requested": cfg.sched, "cpus": len(set(state.cores)),
                  "timeslice_us": cfg.timeslice_us if state.sched == "hypervisor" else None,
                  "description": sched_description(state.sched)},
        "stop": state.stop, "fork_ns": state.fork_ns, "victims": state.victims,
        "starved_s": None if state.starved is None else [float(x) for x in state.starved],
        "watch_resolution_s": POLL_S,
        "parent_peak_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    }
    if state.lat is not None:
        state.lat.collect(stats, n)
        runtime["lat_worst_per_s"] = state.lat.per_second()
    return results.build(
        cfg=cfg, cores=state.cores, stats=stats[:n].copy(), hist=views["hist"][:n].copy(),
        samples=state.samples, window=state.window, ops_at=state.ops_at,
        lost_writes=lost, writes_reported=written, writes_counted=counted, variant_checks=vchecks,
        failure=state.failure, interrupted=state.interrupted, startup=state.startup,
        exitcodes=[p.exitcode for p in procs], complete=exited and not state.victims, extra=state.extra,
        runtime=runtime, module=state.module,
    )


def sched_description(model: str) -> str:
    if model == "dedicated":
        return "one vCPU per CPU, nothing else scheduled on it"
    return cfgmod.SCHED_MODELS[model]
