"""The parent side of a run: compile, lay out, fork, start, watch, stop, check.

The harness never knows which variant it runs (docs/variants.md, conventions 2): the variant is a
registry entry, its id travels in the parameter array, and its state is sized
and initialised through the variant's own hooks.

Every exit path goes through one ``finally``: stop flag, SIGKILL for anything
still alive, reap every child, unlink the segment. SIGTERM is turned into an
exception so that it takes the same path as Ctrl-C.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass, field

import multiprocess as mp
import numpy as np

from shared import Arena, Field, Layout, remove_stale
from workers import vcpu as vcpu_worker

from . import abi, kernels, tlb
from . import config as cfgmod
from . import variants as registry
from .topology import allowed_cpus, host_topology, place

STALL_S = 1.0          # a running vCPU whose heartbeat is older than this has stalled
POLL_S = 0.05
READY_TIMEOUT_S = 60.0
JOIN_TIMEOUT_S = 5.0


class Interrupted(Exception):
    """The run was stopped by a signal (Ctrl-C or SIGTERM)."""

    def __init__(self, signame: str):
        super().__init__(signame)
        self.signame = signame


def build_layout(cfg: cfgmod.RunConfig) -> Layout:
    v = registry.get(cfg.variant)
    dom_words, bit_words, row_words = v.module.state_shape(cfg)
    V = cfg.vcpus
    return Layout((
        Field("ctl", "int64", (abi.N_CTL,)),
        Field("dom", "int64", (max(dom_words, 8),)),
        Field("pte", "int64", (max(V * cfg.entries, 1),)),
        Field("dbits", "int64", (max(bit_words, 1),)),
        Field("vst", "int64", (V, max(row_words, abi.V_RESERVED)), per_vcpu=True),
        Field("stats", "int64", (V, abi.N_STATS), per_vcpu=True),
        Field("mail", "int64", (V, abi.N_MAIL), per_vcpu=True),
        Field("hist", "int64", (V, abi.LAT_BINS), per_vcpu=True),
        Field("live", "int64", (V, 2 * cfg.nest), per_vcpu=True),
        Field("expect", "int64", (V, cfg.frames), per_vcpu=True),
        Field("frames", "int64", (cfg.frames, kernels.frame_words(V))),
    ))


def init_state(views: dict, cfg: cfgmod.RunConfig) -> None:
    views["frames"][:, 0] = np.arange(cfg.frames, dtype=np.int64)
    views["dom"][tlb.D_TLBCLOCK] = 1
    registry.get(cfg.variant).module.init_state(views, cfg)


def kernel_args(views: dict, p: np.ndarray, tlbv: np.ndarray, rng: np.ndarray) -> tuple:
    return (p, views["dom"], views["pte"], views["dbits"], views["vst"], views["frames"], views["expect"],
            views["stats"], views["hist"], views["live"], tlbv, rng)


def compile_kernels(cfg: cfgmod.RunConfig, p: np.ndarray) -> None:
    """Compile (or load from the on-disk cache) the loop, on private throwaway state.

    Done in the parent before forking, so that every worker inherits the code.
    """
    layout = build_layout(cfg)
    views = layout.views(bytearray(layout.size))
    init_state(views, cfg)
    tlbv = tlb.make_tlb(int(p[abi.P_TLB_SETS]), int(p[abi.P_TLB_WAYS]))
    kernels.run_ops(1, 0, *kernel_args(views, p, tlbv, kernels.seed_state(cfg.seed, 0)))


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
    samples: list = field(default_factory=list)
    failure: dict | None = None
    interrupted: str | None = None
    startup: dict = field(default_factory=dict)
    window: tuple = (0.0, 0.0)
    ops_at: tuple = ((), ())
    extra: dict = field(default_factory=dict)     # what stress hooks add to the result


def _raise_interrupted(signum, frame):
    raise Interrupted(signal.Signals(signum).name)


def run(cfg: cfgmod.RunConfig, on_sample=None, t_launch: float | None = None, hooks=None) -> dict:
    """Run one experiment; a result dictionary (see ``testbed.results``).

    ``hooks``, if given, is told of the run as it goes (``testbed.stress``):
    ``start(state, procs, views, t_start)`` once the vCPUs are released,
    ``tick(now)`` on every poll (it may return a failure dictionary to end the
    run), and ``stall(failure)`` when the watchdog finds a vCPU that stopped.
    """
    t0 = time.perf_counter()
    cfg = cfgmod.validate(cfg)
    topo = host_topology()
    cores = place(topo, allowed_cpus(topo, cfg.cpus), cfg.vcpus, cfg.oversubscribe)
    p = cfgmod.params(cfg)
    remove_stale()

    state = RunState(cfg, cores)
    t_compile = time.perf_counter()
    compile_kernels(cfg, p)
    state.startup["compile_s"] = time.perf_counter() - t_compile

    layout = build_layout(cfg)
    arena = None
    procs = []
    old_term = signal.signal(signal.SIGTERM, _raise_interrupted)
    try:
        arena = Arena.create(layout)
        views = arena.views
        init_state(views, cfg)
        ctx = mp.get_context("fork")
        t_fork = time.perf_counter()
        for v, core in enumerate(cores):
            proc = ctx.Process(
                target=vcpu_worker.main,
                args=(arena.name, layout, p, v, core, cfg.seed, os.getpid()),
                name=f"testbed-vcpu{v}", daemon=True,
            )
            proc.start()
            procs.append(proc)
        state.startup["fork_s"] = time.perf_counter() - t_fork
        _wait_ready(state, procs, views)
        state.startup["attach_s"] = time.perf_counter() - t_fork - state.startup["fork_s"]
        state.startup["total_s"] = time.perf_counter() - t0
        if t_launch is not None:
            state.startup["since_launch_s"] = time.perf_counter() - t_launch
        if state.failure is None:
            _measure(state, procs, views, on_sample, hooks=hooks)
        views["ctl"][abi.C_STOP] = 1
        if state.failure is not None and state.failure["kind"] == "stalled" and state.failure.get("action") != "resumed":
            _kill(procs[state.failure["vcpu"]])      # a stopped process cannot heed the stop flag
        hung = _reap(procs)
        if hung and state.failure is None:
            v = hung[0]
            state.failure = {"kind": "hung", "vcpu": v, "pid": procs[v].pid,
                             "message": f"vCPU {v} (pid {procs[v].pid}) did not stop within {JOIN_TIMEOUT_S:.0f} s "
                                        f"of the stop flag and was killed"}
        return _result(state, procs, views, layout)
    except (KeyboardInterrupt, Interrupted) as e:
        state.interrupted = e.signame if isinstance(e, Interrupted) else "SIGINT"
        if arena is not None and arena.views:
            arena.views["ctl"][abi.C_STOP] = 1
            _reap(procs)
            return _result(state, procs, arena.views, layout)
        raise
    finally:
        if arena is not None and arena.views:
            arena.views["ctl"][abi.C_STOP] = 1
        _reap(procs, kill=True)
        if arena is not None:
            arena.destroy()
        signal.signal(signal.SIGTERM, old_term)


def _wait_ready(state: RunState, procs, views) -> None:
    stats = views["stats"]
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        if all(stats[v, abi.S_STATE] >= abi.W_READY for v in range(len(procs))):
            return
        for v, proc in enumerate(procs):
            if proc.exitcode is not None:
                state.failure = _death(v, proc, views, "before it was ready", state.cfg)
                return
        if time.monotonic() > deadline:
            state.failure = {"kind": "start_timeout", "vcpu": None,
                             "message": f"vCPUs not ready after {READY_TIMEOUT_S:.0f} s"}
            return
        time.sleep(0.001)


def _death(v: int, proc, views, when: str, cfg) -> dict:
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
        live = _live(views, v)
        return {"kind": name, "vcpu": v, "status": status, "live": live,
                "message": f"vCPU {v} stopped: {name} with {len(live)} live mappings ({geometry})"}
    return {"kind": "exited", "vcpu": v, "exitcode": code, "message": f"vCPU {v} exited with status {code} {when}"}


def _live(views, v: int) -> list:
    n = int(views["stats"][v, abi.S_LIVE])
    row = views["live"][v]
    return [(int(row[2 * k]), int(row[2 * k + 1])) for k in range(n)]


def _ops(views, n: int) -> np.ndarray:
    return views["stats"][:n, abi.S_OPS].copy()


def _measure(state: RunState, procs, views, on_sample, clock=time.monotonic, sleep=time.sleep, hooks=None) -> None:
    """Release the vCPUs, sample their counters once a second, watch them, stop at the end.

    The first ``warmup`` seconds are sampled and reported but not measured; the
    measured window runs from the first reading after the warm-up to the end.
    ``clock`` and ``sleep`` are parameters so that tests can drive a fake clock.
    """
    cfg = state.cfg
    n = len(procs)
    views["ctl"][abi.C_START] = 1
    t_start = clock()
    end = t_start + cfg.warmup + cfg.duration
    last_t, last_ops = t_start, _ops(views, n)
    next_sample = t_start + 1.0
    warm_ops, warm_t = (last_ops, t_start) if cfg.warmup == 0 else (None, None)
    watchdog = Watchdog(procs, views, cfg, clock=clock)
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
            if on_sample is not None:
                on_sample(s, cfg)
            last_t, last_ops = now, ops
            next_sample = max(next_sample + 1.0, now + 0.5)   # after a long pause, no burst of empty samples
        if now >= end:
            break
        bad = watchdog.check()
        if bad is not None and bad["kind"] == "stalled":
            detail = describe_stall(procs, views, cfg, bad["vcpu"])
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


class Watchdog:
    """Finds vCPUs that died or stopped making progress.

    The pulse is ``S_PROGRESS``, which the kernel bumps after every operation
    and on every round of a lock spin: a vCPU waiting behind a preempted lock
    holder still beats, a vCPU that is stopped (SIGSTOP) or hung does not.
    """

    def __init__(self, procs, views, cfg, stall_s: float = STALL_S, clock=time.monotonic):
        self.procs, self.views, self.cfg, self.stall_s, self.clock = procs, views, cfg, stall_s, clock
        now = clock()
        self.last = [(int(views["stats"][v, abi.S_PROGRESS]), now) for v in range(len(procs))]

    def check(self):
        stats = self.views["stats"]
        now = self.clock()
        for v, proc in enumerate(self.procs):
            if proc.exitcode is not None:
                return _death(v, proc, self.views, "during the run", self.cfg)
            pulse = int(stats[v, abi.S_PROGRESS])
            if pulse != self.last[v][0] or stats[v, abi.S_STATE] != abi.W_RUNNING:
                self.last[v] = (pulse, now)
            elif now - self.last[v][1] > self.stall_s:
                return {"kind": "stalled", "vcpu": v, "pid": proc.pid,
                        "message": f"vCPU {v} (pid {proc.pid}) made no progress for {now - self.last[v][1]:.1f} s"}
        return None


def describe_stall(procs, views, cfg, v: int) -> dict:
    """The state of a stalled vCPU's process, and what the variant says it holds."""
    import psutil

    try:
        status = psutil.Process(procs[v].pid).status()
    except psutil.Error:
        status = "gone"
    out = {"process_status": status}
    hook = getattr(registry.get(cfg.variant).module, "describe_stall", None)
    if hook is not None:
        out.update(hook(views, cfg, v))
    spinning = [u for u in range(len(procs)) if u != v and views["stats"][u, abi.S_STATE] == abi.W_RUNNING]
    out["others_running"] = len(spinning)
    return out


def lost_writes(views, cfg) -> tuple[int, int, int]:
    """(writes lost frame by frame, writes the vCPUs report, writes the frames counted)."""
    n = cfg.vcpus
    cols = np.array([kernels.counter_col(v) for v in range(n)])
    actual = views["frames"][:, cols].T                  # (vcpus, frames)
    meant = views["expect"][:n, :cfg.frames]
    return (int(np.maximum(meant - actual, 0).sum()), int(views["stats"][:n, abi.S_WRITES].sum()),
            int(actual.sum()))


def live_mappings(views, n: int) -> dict:
    return {v: _live(views, v) for v in range(n)}


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
    from . import results

    cfg = state.cfg
    n = cfg.vcpus
    stats = views["stats"]
    lost, written, counted = lost_writes(views, cfg)
    vchecks = registry.get(cfg.variant).module.check(views, cfg, live_mappings(views, n))
    exited = all(p.exitcode is not None for p in procs)
    return results.build(
        cfg=cfg, cores=state.cores, stats=stats[:n].copy(), hist=views["hist"][:n].copy(),
        samples=state.samples, window=state.window, ops_at=state.ops_at,
        lost_writes=lost, writes_reported=written, writes_counted=counted, variant_checks=vchecks,
        failure=state.failure, interrupted=state.interrupted, startup=state.startup,
        exitcodes=[p.exitcode for p in procs], complete=exited, extra=state.extra,
    )
