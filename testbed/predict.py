"""``testbed predict``: fit a contention model on the CPUs this host has, predict the CPUs it has not,
and check every prediction against every measured point the fit did not use.

The inputs are measured here, from the runs ``scale`` makes (``experiments.scale``) and
a cache-line ping-pong (``pingpong``):

- per design on one vCPU: cycles per operation, and for a design with a lock the
  acquisitions per operation, the mean cycles held (``lock_hold_cycles /
  lock_hold_samples``) and so ``a``, the cycles between one CPU's acquisitions
  outside the lock; for one without, its full TLB flushes per operation (each
  ticks the shared TLB clock);
- ``c``, one cache-line transfer between two CPUs of one socket (siblings if that
  is all the host has).

The models are in ``contention``. A design with a lock follows the
Boyd-Wickizer et al. chain with its lock's handoff; a design without one scales
linearly but for the TLB clock's transfers, ``T(n) = T(1) + f c (n - 1) / n``;
``directmap`` is the floor every drop is taken against. On a host with more
cores, ``--validate`` measures every count up to them, fits ``c`` and the USL
on counts up to 4 and checks the rest.

``--seed-table`` reads the seed's Geekbench table backwards: the single-core
drops and the measured extra cycles per map of each design give the map rate
that explains each, and from a rate the multi-core column is predicted.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os

import numpy as np

from . import contention, stats
from . import variants as registry
from .errors import UsageError

LOCKED = "locked"
HORIZON_S = 3600.0       # timers: a guest that panics once an hour of its run (the testbed's own choice)
TIMER_SAMPLES = 20000    # hypercalls drawn per pCPU count for the -ETIME probability
# The seed's Geekbench table (per-vcpu-mapcache-patch.txt): drops in percent, printed to two decimals.
SEED = {"old": {"design": "locked:ticket", "single": 0.04, "multi": 2.43},
        "new": {"design": "lockless", "single": 0.18, "multi": 0.08}}
SEED_VCPUS = 32
SEED_ROUNDING = 0.005    # a drop printed as 0.04% is between 0.035% and 0.045%
MAX_TO = 4096            # the testbed's own bound: the chain's curve to N costs N**2 steps
WARMUP_S = 0.25          # the testbed's own choice, with --duration 0.5: every design at 1 and 2 vCPUs in a minute


def add_arguments(ap: argparse.ArgumentParser) -> None:
    from .options import _int, add_run_options

    add_run_options(ap, duration=0.5, workload="guest", vcpus=None, variant=False)
    for action in ap._actions:               # a shorter warm-up than a run's: 14 runs in under a minute
        if action.dest == "warmup":
            action.default = WARMUP_S
            action.help = action.help.rsplit(" (default", 1)[0] + f" (default {WARMUP_S:g})"
    ap.add_argument("--variants", default=None,
                    help="comma-separated designs (default: every real design, locked under each lock)")
    ap.add_argument("--to", dest="to", type=_int, default=256, metavar="N",
                    help=f"predict from 1 to N pCPUs, N up to {MAX_TO} (default 256)")
    ap.add_argument("--repeat", type=_int, default=2, help="repetitions of each measured point (default 2)")
    ap.add_argument("--validate", action="store_true",
                    help="measure every count up to the host's CPUs, fit on 1-4 and check the rest")
    ap.add_argument("--seed-table", action="store_true",
                    help="the map rate that explains the seed's single-core drops, and its multi-core column")
    ap.add_argument("--json", default=None, help="write the predictions, inputs, fits and checks to this JSON file")


def main(args) -> int:
    from . import experiments, pingpong, results
    from .options import check_writable, config_from
    from .timing import tsc_hz
    from .topology import allowed_cpus, host_topology

    if not 1 <= args.to <= MAX_TO:
        raise UsageError(f"--to {args.to}: predict to between 1 and {MAX_TO} pCPUs, e.g. --to 256")
    if args.repeat < 1:
        raise UsageError(f"--repeat {args.repeat}: must be at least 1")
    names = registry.names(args.variants) if args.variants else (
        [LOCKED, "lockless"] if args.seed_table else list(registry.DESIGNS))
    names = [n for n in names if n != registry.BASELINE]
    locks = args.locks or (["ticket"] if args.seed_table and not args.variants else None)
    if locks is None:
        locks = list(registry.get(LOCKED).locks) if LOCKED in names else None
    if args.json:
        check_writable(args.json, "--json")
    base = config_from(args)
    topo = host_topology()
    allowed = allowed_cpus(topo, base.cpus)
    cpus = len(allowed)
    if cpus < 2:
        raise UsageError(f"predict measures c between two CPUs and checks at 2 or more; --cpus allows {cpus}; "
                         "give it two or more")
    counts = list(range(1, cpus + 1)) if args.validate else experiments.default_counts(cpus)
    fit_counts = [n for n in counts if n <= 4 and n < counts[-1]] if args.validate else [1]
    todo = experiments.series([registry.BASELINE] + names, locks)
    with_lock = [(label, f) for label, f in todo if registry.get(f["variant"]).locks]
    experiments.plan([dataclasses.replace(base, vcpus=n, **f) for _, f in todo for n in counts] +
                     [dataclasses.replace(base, workload="timers", vcpus=n, **f) for _, f in with_lock for n in counts])
    say = wrapped(lambda text: print(text, flush=True))
    say(f"testbed predict: {', '.join(label for label, _ in todo)}; measured at {','.join(map(str, counts))} "
        f"pCPUs, fit on {','.join(map(str, fit_counts))}, predicted to {args.to}; workload {base.workload}, "
        f"seed {base.seed}")

    hz = tsc_hz()
    load = [os.getloadavg()[0]]
    pp = pingpong.measure(topo, allowed, hz)
    c_pair = next((p for rel in ("same socket", "siblings", "across sockets") for p in pp if p["relation"] == rel))
    say("cache-line transfer c: " + "; ".join(f"{p['relation']} (CPUs {p['cpus'][0]},{p['cpus'][1]}) "
                                               f"{p['cycles']:.0f} +/- {p['spread']:.0f} cycles" for p in pp)
        + f"; the model uses {c_pair['relation']}")

    sc = experiments.scale(base, variants=[registry.BASELINE] + names, vcpu_counts=counts, repeat=args.repeat,
                           locks=locks)
    tm = {}
    if with_lock and not sc.get("interrupted"):
        tbase = dataclasses.replace(base, workload="timers")
        for n in counts:
            tm[n] = experiments.timers(dataclasses.replace(tbase, vcpus=n), variants=[LOCKED], locks=locks)
            if tm[n].get("interrupted"):
                break                         # Ctrl-C or SIGTERM: what finished is reported, nothing more runs
    load.append(os.getloadavg()[0])
    res = build(sc, tm, pp, c_pair, hz, counts, fit_counts, args.to, base, seed_table=args.seed_table)
    res["host_load"] = {"start": load[0], "end": load[1], "cpus": os.cpu_count()}
    print_predict(res)
    failures = sc["failures"] + [f for t in tm.values() for f in t["failures"]]
    res.update(failures=failures, runs=sc["runs"] + [r for t in tm.values() for r in t["runs"]])
    if args.json:
        results.write_json(results.envelope("predict", base, finite(res)), args.json)
        print(f"results written to {args.json}")
    interrupted = sc.get("interrupted") or next((t["interrupted"] for t in tm.values() if t.get("interrupted")), None)
    checks = [p for d in res["designs"] for p in d["points"] if p["error_pct"] is not None]
    worst = max((abs(p["error_pct"]) for p in checks), default=None)
    verdict = "FAILURE" if failures or interrupted else "SUCCESS"
    print(f"verdict: {verdict} ({len(res['designs'])} designs, {len(checks)} points checked"
          + (f", worst error {worst:.0f}%" if worst is not None else "") + f", unvalidated past {counts[-1]} pCPUs)")
    if interrupted:
        from .errors import signal_exit
        return signal_exit(interrupted)
    return 1 if failures else 0


def finite(x):
    """``x`` with every infinite or NaN number as None (JSON has neither), numpy numbers as Python's."""
    if isinstance(x, dict):
        return {k: finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [finite(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


# --- inputs ---------------------------------------------------------------------------------------


def _runs(sc: dict, label: str, n: int) -> list[dict]:
    return [r for r in sc["runs"] if r["label"] == label and r["vcpus"] == n]


def _ratio(t: dict, num: str, den: str):
    return t[num] / t[den] if t[den] else None


def _mid(values) -> dict:
    """Median and spread (median absolute deviation) of the values that exist; None when none."""
    xs = [float(v) for v in values if v is not None]
    if not xs:
        return {"value": None, "spread": None, "n": 0}
    return {"value": stats.median(xs), "spread": stats.mad(xs), "n": len(xs)}


def point_inputs(runs: list[dict], hz: float) -> dict:
    """What one measured point says, each with its spread over the repetitions."""
    per_vcpu_rate = [r["totals"]["ops_per_s"] / r["vcpus"] for r in runs]
    t = [r["totals"] for r in runs]
    return {
        "ops_per_s": _mid(r["totals"]["ops_per_s"] for r in runs),
        "cycles_per_op": _mid(hz / x for x in per_vcpu_rate if x > 0),
        "maps_per_op": _mid(_ratio(x, "maps", "all_ops") for x in t),
        "acquisitions_per_op": _mid(_ratio(x, "lock_acquisitions", "all_ops") for x in t),
        "hold_cycles": _mid(_ratio(x, "lock_hold_cycles", "lock_hold_samples") for x in t),
        "wait_cycles": _mid(_ratio(x, "lock_spin_cycles", "lock_acquisitions") for x in t),
        "handoff_cycles": _mid(_ratio(x, "lock_handoff_cycles", "lock_handoffs") for x in t),
        "flush_all_per_op": _mid(_ratio(x, "tlb_flush_all", "all_ops") for x in t),
    }


# --- the model of one design ----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Design:
    """One design's fitted model: ``ops_per_s(n)`` and, with a lock, the lock's waits."""
    label: str
    kind: str | None            # the lock's handoff (contention.KINDS), None without a lock
    cycles_per_op: float        # one vCPU alone
    acq_per_op: float
    flush_per_op: float
    lock: contention.Lock | None
    c: float
    hz: float

    def ops_per_s(self, n: int) -> float:
        if self.lock is None:
            return n * self.hz / (self.cycles_per_op + self.flush_per_op * self.c * (n - 1) / n)
        return contention.throughput(self.lock, n) * self.hz / self.acq_per_op

    def wait(self, n: int) -> float:
        return contention.mean_wait(self.lock, n) if self.lock else 0.0

    def p99(self, n: int) -> float:
        return contention.wait_quantile(self.lock, n) if self.lock else 0.0


def fit_design(label: str, kind: str | None, fit_points: dict, c: float, hz: float) -> tuple[Design, dict]:
    """The model from the one-vCPU point (and, with more fit points, ``c`` fitted to them)."""
    one = fit_points[1]
    cyc = one["cycles_per_op"]["value"]
    acq = one["acquisitions_per_op"]["value"] or 0.0
    flush = one["flush_all_per_op"]["value"] or 0.0
    fit = {"points": sorted(fit_points), "c_source": "ping-pong"}
    if kind is None or acq == 0:
        return Design(label, None, cyc, 0.0, flush, None, c, hz), fit
    s = one["hold_cycles"]["value"] or 0.0
    a = max(cyc / acq - s, 0.0)
    fit["a_clamped"] = cyc / acq - s < 0
    more = {n: p for n, p in fit_points.items() if n > 1}
    if more:
        xs = [p["ops_per_s"]["value"] * acq / hz for p in more.values()]
        f = contention.fit_handoff(kind, a, s, list(more), xs, c)
        c = f["c"]
        fit.update(c_source=f"fitted to {','.join(map(str, sorted(more)))} pCPUs", c_residuals_pct=f["residuals_pct"])
    return Design(label, kind, cyc, acq, flush, contention.Lock(kind, a, s, c), c, hz), fit


def _err(pred, meas):
    return 100.0 * (pred - meas) / meas if meas else None


def curve_points(to: int) -> list[int]:
    """The pCPU counts a curve is printed at: 1, 2, 4, ... and ``to`` (scale's default counts)."""
    from .experiments import default_counts

    return default_counts(to)


def build(sc, tm, pp, c_pair, hz, counts, fit_counts, to, base, seed_table=False) -> dict:
    """Every design's inputs, fit, curve to ``to`` pCPUs, collapse, checks; the timers and seed tables."""
    labels = list(dict.fromkeys(r["label"] for r in sc["runs"]))
    measured = {lab: {n: point_inputs(_runs(sc, lab, n), hz) for n in counts if _runs(sc, lab, n)} for lab in labels}
    c = c_pair["cycles"]
    models, designs = {}, []
    for lab in labels:
        if 1 not in measured[lab]:
            continue
        variant = lab.split(":")[0]
        kind = lab.split(":")[1] if ":" in lab else (registry.get(variant).locks or (None,))[0]
        fits = {n: p for n, p in measured[lab].items() if n in fit_counts}
        model, fit = fit_design(lab, kind, fits, c, hz)
        models[lab] = model
        designs.append({"label": lab, "model": model, "fit": fit})
    dm = models.get(registry.BASELINE)
    out = []
    show = sorted(set(curve_points(to)) | {n for n in counts if n <= to})
    for d in designs:
        m, lab = d["model"], d["label"]
        curve = [m.ops_per_s(n) for n in range(1, to + 1)]
        pts = []
        for n, p in sorted(measured[lab].items()):
            used = n in fit_counts
            pred, meas = m.ops_per_s(n), p["ops_per_s"]["value"]
            row = {"pcpus": n, "fit": used, "predicted": pred, "measured": meas,
                   "measured_spread": p["ops_per_s"]["spread"], "error_pct": None if used else _err(pred, meas)}
            if m.lock:
                row.update(predicted_wait_cycles=m.wait(n), measured_wait_cycles=p["wait_cycles"]["value"],
                           measured_handoff_cycles=p["handoff_cycles"]["value"])
            if dm is not None and lab != registry.BASELINE and n in measured[registry.BASELINE]:
                mdm = measured[registry.BASELINE][n]["ops_per_s"]["value"]
                row.update(predicted_drop_pct=100 * (1 - pred / dm.ops_per_s(n)),
                           measured_drop_pct=100 * (1 - meas / mdm) if mdm else None)
            pts.append(row)
        shown = []
        for n in show:
            r = {"pcpus": n, "ops_per_s": curve[n - 1],
                 "drop_pct": 100 * (1 - curve[n - 1] / dm.ops_per_s(n)) if dm and lab != registry.BASELINE else None}
            if m.lock:
                r.update(wait_cycles=m.wait(n), p99_wait_cycles=m.p99(n))
            shown.append(r)
        one = measured[lab][1]
        inputs = {"cycles_per_op": one["cycles_per_op"], "flush_all_per_op": one["flush_all_per_op"],
                  "maps_per_op": one["maps_per_op"], "c_cycles": {"value": m.c, "spread": c_pair["spread"],
                                                                   "source": d["fit"]["c_source"]}}
        if m.lock:
            inputs.update(acquisitions_per_op=one["acquisitions_per_op"], hold_cycles=one["hold_cycles"],
                          a_cycles={"value": m.lock.a, "source": "cycles per acquisition on 1 pCPU minus hold"})
        col = contention.collapse(curve)
        out.append({
            "design": lab, "lock": m.kind,
            "model": (f"Boyd-Wickizer et al. 2012 ticket-lock chain, {m.kind} handoff" if m.lock else
                      "no lock: linear in pCPUs, per-op cost plus the TLB clock's line transfers per flush"),
            "inputs": inputs, "fit": d["fit"], "points": pts, "curve": shown,
            "curve_all": [round(x, 3) for x in curve],
            "collapse_pcpus": col, "peak_ops_per_s": max(curve), "peak_pcpus": int(np.argmax(curve)) + 1,
            "residuals_pct": [p["error_pct"] for p in pts if p["fit"] and p["error_pct"] is not None] or
                             [_err(p["predicted"], p["measured"]) for p in pts if p["fit"]],
            "usl": _usl(measured[lab], fit_counts, counts),
            "validated_to": counts[-1],
        })
    res = {"to": to, "counts": counts, "fit_counts": fit_counts, "tsc_hz": hz, "pingpong": pp,
           "c_relation": c_pair["relation"], "limits": list(contention.LIMITS), "designs": out,
           "timers": _timers(tm, models, hz, counts, fit_counts, to, base),
           "validation_note": _note(counts, fit_counts)}
    if seed_table:
        res["seed_table"] = seed_table_of(sc, measured, models, hz)
    return res


def _usl(points: dict, fit_counts, counts) -> dict:
    fit = [n for n in fit_counts if n in points]
    if len(fit) < 3:
        return {"fitted": False, "why": f"the USL needs 3 or more fitted pCPU counts; the fit has {len(fit)} "
                                        f"({','.join(map(str, fit))})"}
    xs = [points[n]["ops_per_s"]["value"] for n in fit]
    f = contention.fit_usl(fit, xs)
    checks = [{"pcpus": n, "predicted": float(contention.usl(n, f["lam"], f["sigma"], f["kappa"])),
               "measured": points[n]["ops_per_s"]["value"]} for n in counts if n not in fit and n in points]
    for ch in checks:
        ch["error_pct"] = _err(ch["predicted"], ch["measured"])
    return {"fitted": True, **f, "checks": checks}


def _note(counts, fit_counts) -> str:
    checked = [n for n in counts if n not in fit_counts]
    if len(checked) == 1 and fit_counts == [1]:
        return (f"fit on 1 pCPU, checked at {checked[0]}: this shows whether inputs measured without contention "
                f"(a, s) and the ping-pong's c predict the first contention; it does not show the curve's shape, "
                f"its collapse point or anything past {checked[0]} pCPUs")
    return (f"fit on {','.join(map(str, fit_counts))} pCPUs, checked at {','.join(map(str, checked)) or 'none'}; "
            f"nothing past {counts[-1]} pCPUs is checked")


# --- timers ---------------------------------------------------------------------------------------


def etime_probability(lock: contention.Lock, n: int, path_cycles: float, acq_per_call: float, burst: int,
                      slack_cycles: float, rng: np.random.Generator, samples: int = TIMER_SAMPLES) -> float:
    """P(a hypercall's path from deadline to armed timer exceeds the slack) on ``n`` pCPUs: the one-pCPU
    path plus the model's waits of its acquisitions (each of ``burst`` maps takes the lock with
    probability ``acq_per_call / burst``)."""
    p = min(1.0, acq_per_call / burst) if burst else 0.0
    m = rng.binomial(burst, p, size=samples)
    waits = contention.sample_waits(lock, n, (samples, burst), rng)
    taken = np.arange(burst)[None, :] < m[:, None]
    total = path_cycles + np.sum(np.where(taken, waits, 0.0), axis=1)
    return float(np.mean(total > slack_cycles))


def panics_per_hour(q: float, calls_per_s: float, streak: int, n: int) -> float:
    """Streaks of ``streak`` consecutive -ETIME begun per hour over ``n`` vCPUs, calls independent."""
    return n * calls_per_s * HORIZON_S * (1 - q) * q ** streak if q < 1 else math.inf


def _timers(tm: dict, models: dict, hz, counts, fit_counts, to, base) -> list[dict]:
    if 1 not in tm:
        return []
    out = []
    for row in tm[1]["rows"]:
        lab = row["variant"]
        if lab not in models or models[lab].lock is None:
            continue
        run1 = next(r for r in tm[1]["runs"] if r["label"] == lab)
        cfg = run1["config"]
        t = run1["totals"]
        calls = t["all_ops"]
        if not calls or not t["timer_sets"]:
            continue
        acq = t["lock_acquisitions"] / calls
        hold = t["lock_hold_cycles"] / t["lock_hold_samples"] if t["lock_hold_samples"] else models[lab].lock.s
        cyc = hz / t["ops_per_s"] if t["ops_per_s"] else None
        if not cyc or not acq:
            continue
        lock = contention.Lock(lab.split(":")[1], max(cyc / acq - hold, 0.0), hold, models[lab].c)
        path = t["timer_path_cycles"] / t["timer_sets"]
        slack = cfg["slack_us"] * 1e-6 * hz
        streak, burst = cfg["panic_streak"], cfg["burst"]

        def q_of(n):
            return etime_probability(lock, n, path, acq, burst, slack, np.random.default_rng(base.seed + n))

        def rate(n):
            return contention.throughput(lock, n) / acq * hz / n

        panic = _first(lambda n: panics_per_hour(q_of(n), rate(n), streak, n) >= 1, to)
        pts = []
        for n in counts:
            r = next((x for x in tm[n]["rows"] if x["variant"] == lab), None) if n in tm else None
            if r is None:
                continue
            pred, meas = q_of(n), r["etime_rate"]
            pts.append({"pcpus": n, "fit": n in fit_counts, "predicted_etime_rate": pred, "measured_etime_rate": meas,
                        "error_points": None if n in fit_counts else 100 * (pred - meas),
                        "measured_panics": r["panics"], "measured_worst_streak": r["worst_streak"]})
        out.append({"design": lab, "slack_us": cfg["slack_us"], "panic_streak": streak, "burst": burst,
                     "path_cycles_1": path, "acquisitions_per_call": acq, "hold_cycles": hold, "a_cycles": lock.a,
                     "panic_pcpus": panic, "horizon_s": HORIZON_S,
                     "curve": [{"pcpus": n, "etime_rate": q_of(n)} for n in curve_points(to)], "points": pts})
    return out


def _first(pred, to: int) -> int | None:
    """The least n in 1..to with pred(n), pred monotone (bisection), or None."""
    if not pred(to):
        return None
    lo, hi = 0, to            # pred(hi) holds; pred(lo) does not (lo = 0: nothing below 1)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if pred(mid):
            hi = mid
        else:
            lo = mid
    return hi


# --- the seed's table read backwards --------------------------------------------------------------


def _extra_per_map(sc: dict, lab: str) -> dict | None:
    """Cycles per map a design adds over directmap on one vCPU, its runs paired with the baseline's by
    seed (``experiments.extra_cycles_per_map``, compare's column): the seed table's single-core cost."""
    from .experiments import extra_cycles_per_map

    ref = {r["seed"]: r for r in _runs(sc, registry.BASELINE, 1)}
    xs = [extra_cycles_per_map(r, ref[r["seed"]]) for r in _runs(sc, lab, 1) if r["seed"] in ref]
    xs = [x for x in xs if x is not None]
    return {"value": stats.median(xs), "spread": stats.mad(xs), "n": len(xs)} if xs else None


def rate_for(drop_pct: float, extra_cycles: float, hz: float) -> float:
    """Maps per second of a vCPU that a single-core drop implies: extra time r x / hz of the directmap
    time, drop = (r x / hz) / (1 + r x / hz)."""
    d = drop_pct / 100
    return hz * d / ((1 - d) * extra_cycles) if extra_cycles > 0 else math.inf


def multi_drop(model: Design, rate: float, extra: float, maps_per_op: float, hz: float, n: int) -> float:
    """The drop on ``n`` pCPUs of a guest mapping ``rate`` times a second per vCPU with this design."""
    single = rate * extra / hz           # extra time per unit of directmap time, one vCPU
    if model.lock is None:
        extra_n = single + rate * (model.flush_per_op / maps_per_op) * model.c * (n - 1) / n / hz
        return 100 * extra_n / (1 + extra_n)
    acq_per_map = model.acq_per_op / maps_per_op
    per_acq = hz / (rate * acq_per_map) * (1 + single)     # cycles between acquisitions with the lock's cost in
    lock = contention.Lock(model.kind, max(per_acq - model.lock.s, 0.0), model.lock.s, model.lock.c)
    ratio = contention.throughput(lock, n) * per_acq / n   # progress of a vCPU against its uncontended own
    return 100 * (1 - ratio / (1 + single))


def _rate_for_multi(model: Design, drop_pct: float, extra: float, maps_per_op: float, hz: float) -> float | None:
    """The map rate at which the model predicts ``drop_pct`` on the seed's vCPUs (bisection on a log
    scale between 1 and 10**9 maps a second), or None if no rate there does."""
    def f(r):
        return multi_drop(model, r, extra, maps_per_op, hz, SEED_VCPUS) - drop_pct

    lo, hi = 1.0, 1e9
    if f(lo) > 0 or f(hi) < 0:
        return None
    for _ in range(100):
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if f(mid) < 0 else (lo, mid)
    return math.sqrt(lo * hi)


def seed_table_of(sc: dict, measured: dict, models: dict, hz: float) -> dict:
    rows, rates = {}, {}
    for which, seed in SEED.items():
        lab = seed["design"]
        ex = _extra_per_map(sc, lab)
        if ex is None or lab not in models:
            rows[which] = {"design": lab, "why": f"{lab} and {registry.BASELINE} were not both measured"}
            continue
        lo_d, hi_d = seed["single"] - SEED_ROUNDING, seed["single"] + SEED_ROUNDING
        lo_x, hi_x = ex["value"] + ex["spread"], ex["value"] - ex["spread"]
        rate = rate_for(seed["single"], ex["value"], hz)
        band = (rate_for(lo_d, lo_x, hz), rate_for(hi_d, hi_x, hz) if hi_x > 0 else math.inf)
        rates[which] = band
        rows[which] = {"design": lab, "extra_cycles_per_map": ex, "seed_single_pct": seed["single"],
                       "seed_multi_pct": seed["multi"], "rate_maps_per_s": rate, "rate_band": list(band)}
    common = None
    positive = all(rows[w]["extra_cycles_per_map"]["value"] > 0 for w in rates)
    if len(rates) == 2 and positive and all(r[0] < r[1] for r in rates.values()):
        lo, hi = max(r[0] for r in rates.values()), min(r[1] for r in rates.values())
        common = math.sqrt(lo * hi) if lo <= hi else None
    for which, row in rows.items():
        if "why" in row:
            continue
        m = models[row["design"]]
        maps = measured[row["design"]][1]["maps_per_op"]["value"]
        ex = row["extra_cycles_per_map"]["value"]
        for key, r in (("own_rate", row["rate_maps_per_s"]), ("common_rate", common)):
            row[f"predicted_multi_pct_{key}"] = (multi_drop(m, r, ex, maps, hz, SEED_VCPUS)
                                                 if r is not None and math.isfinite(r) and ex > 0 else None)
        row["rate_for_seed_multi"] = _rate_for_multi(m, row["seed_multi_pct"], ex, maps, hz) if ex > 0 else None
    ratio_needed = SEED["new"]["single"] / SEED["old"]["single"]
    exs = [rows[w].get("extra_cycles_per_map", {}).get("value") for w in ("old", "new")]
    ratio_seen = exs[1] / exs[0] if None not in exs and exs[0] else None
    return {"rows": rows, "common_rate": common, "vcpus": SEED_VCPUS, "ratio_needed": ratio_needed,
            "ratio_measured": ratio_seen}


# --- output ---------------------------------------------------------------------------------------


def _us(cycles, hz) -> str:
    return "-" if cycles is None else f"{cycles / hz * 1e6:.3g}"


def _n(x) -> str:
    return "-" if x is None else f"{x:,.0f}"


WIDTH = 100


def wrapped(write, width: int = WIDTH):
    """``write`` with every line longer than ``width`` folded, its continuation indented 4 more."""
    import textwrap

    def w(text: str) -> None:
        out = []
        for line in text.split("\n"):
            lead = line[:len(line) - len(line.lstrip())]
            out.append(line if len(line) <= width else textwrap.fill(
                line, width, subsequent_indent=lead + "    ", break_on_hyphens=False))
        write("\n".join(out))
    return w


def print_predict(res: dict, out=None) -> None:
    import sys

    w = wrapped((out or sys.stdout).write)
    hz, to, last = res["tsc_hz"], res["to"], res["counts"][-1]
    w(f"\nPredicted from 1 to {to} pCPUs ({res['validation_note']})\n")
    ld = res.get("host_load")
    if ld and max(ld["start"], ld["end"]) > 0.5 * ld["cpus"]:
        w(f"host load average {ld['start']:.1f} at the start, {ld['end']:.1f} at the end on {ld['cpus']} CPUs: other "
          "work shares the CPUs, and measured points with more vCPUs fall below what the model predicts for "
          "CPUs of their own\n")
    for d in res["designs"]:
        inp = d["inputs"]
        w(f"\n{d['design']}: {d['model']}\n")
        parts = [f"{inp['cycles_per_op']['value']:,.0f} +/- {inp['cycles_per_op']['spread']:,.0f} cycles/op"]
        if d["lock"]:
            parts += [f"{inp['acquisitions_per_op']['value']:.3g} acquisitions/op",
                      f"held {inp['hold_cycles']['value']:,.0f} +/- {inp['hold_cycles']['spread']:,.0f} cycles",
                      f"a {inp['a_cycles']['value']:,.0f} cycles"]
        else:
            parts.append(f"{inp['flush_all_per_op']['value'] or 0:.3g} full flushes/op")
        parts.append(f"c {inp['c_cycles']['value']:.0f} cycles ({inp['c_cycles']['source']})")
        w("  inputs: " + ", ".join(parts) + "\n")
        measured = {p["pcpus"]: p for p in d["points"]}
        w(f"  {'pCPUs':>5} {'predicted ops/s':>16} {'drop':>8} {'wait us':>8} {'p99 us':>8} {'measured ops/s':>15} "
          f"{'error':>8}\n")
        for r in d["curve"]:
            p = measured.get(r["pcpus"])
            meas = _n(p["measured"]) if p else ""
            err = ("(fit)" if p["fit"] else f"{p['error_pct']:+.1f}%") if p else ""
            drop = f"{r['drop_pct']:+.2f}%" if r["drop_pct"] is not None else "-"
            w(f"  {r['pcpus']:>5} {r['ops_per_s']:>16,.0f} {drop:>8} {_us(r.get('wait_cycles'), hz):>8} "
              f"{_us(r.get('p99_wait_cycles'), hz):>8} {meas:>15} {err:>8}\n")
            if r["pcpus"] == last and to > last:
                w(f"  {'':5} unvalidated beyond {last} pCPUs\n")
        for p in d["points"]:
            if p["fit"] or p["error_pct"] is None:
                continue
            bits = [f"throughput {p['error_pct']:+.1f}%"]
            if p.get("measured_drop_pct") is not None:
                bits.append(f"drop {p['predicted_drop_pct']:+.2f}% predicted, {p['measured_drop_pct']:+.2f}% measured")
            if p.get("measured_handoff_cycles") is not None:
                bits.append(f"handoff {d['inputs']['c_cycles']['value']:,.0f} (c) in the model, "
                            f"{p['measured_handoff_cycles']:,.0f} measured cycles")
            if p.get("measured_wait_cycles") is not None:
                bits.append(f"mean wait {p['predicted_wait_cycles']:,.0f} predicted, "
                            f"{p['measured_wait_cycles']:,.0f} measured cycles")
            w(f"  check at {p['pcpus']} pCPUs: " + "; ".join(bits) + "\n")
        col = d["collapse_pcpus"]
        w(f"  collapse: " + (f"at {col} pCPUs (peak {d['peak_ops_per_s']:,.0f} ops/s, then falls)" if col else
                             f"none up to {to}") + "\n")
        if d["usl"]["fitted"]:
            u = d["usl"]
            w(f"  USL: lambda {u['lam']:,.0f} sigma {u['sigma']:.4g} kappa {u['kappa']:.4g}; checks " +
              (", ".join(f"{c['pcpus']}: {c['error_pct']:+.1f}%" for c in u["checks"]) or "none") + "\n")
        else:
            w(f"  USL: not fitted ({d['usl']['why']})\n")
    for t in res["timers"]:
        w(f"\ntimers, {t['design']} (Xen <= 4.17: -ETIME; slack {t['slack_us']:g} us, panic after "
          f"{t['panic_streak']} in a row): path {_us(t['path_cycles_1'], hz)} us on 1 pCPU, "
          f"{t['acquisitions_per_call']:.3g} acquisitions/hypercall\n")
        w("  -ETIME rate: " + ", ".join(f"{c['pcpus']}: {100 * c['etime_rate']:.3g}%" for c in t["curve"]) + "\n")
        for p in t["points"]:
            if not p["fit"]:
                w(f"  check at {p['pcpus']} pCPUs: {100 * p['predicted_etime_rate']:.3g}% predicted, "
                  f"{100 * p['measured_etime_rate']:.3g}% measured ({p['error_points']:+.3g} points)\n")
        w(f"  panic: " + (f"from {t['panic_pcpus']} pCPUs (a streak of {t['panic_streak']} at least once an hour, "
                          f"hypercalls independent)" if t["panic_pcpus"] else f"none up to {to}") +
          (f"; unvalidated beyond {last} pCPUs" if to > last else "") + "\n")
    if "seed_table" in res:
        print_seed_table(res["seed_table"], hz, w)
    w("\nlimits of the models:\n" + "".join(f"  - {x}\n" for x in res["limits"]))


def print_seed_table(st: dict, hz: float, w) -> None:
    w(f"\nThe seed's table read backwards (Geekbench, {st['vcpus']} vCPUs)\n")
    for which, r in st["rows"].items():
        if "why" in r:
            w(f"  {which} ({r['design']}): {r['why']}\n")
            continue
        ex = r["extra_cycles_per_map"]
        lo, hi = r["rate_band"]
        if ex["value"] <= 0:
            w(f"  {which} ({r['design']}): {ex['value']:+,.1f} cycles/map over directmap: no map rate gives a drop\n")
            continue
        band = f"{lo:,.0f}..{hi:,.0f}" if math.isfinite(hi) else f"{lo:,.0f} or more"
        w(f"  {which} ({r['design']}): {ex['value']:+,.1f} +/- {ex['spread']:,.1f} cycles/map over directmap; "
          f"single-core {r['seed_single_pct']:.2f}% needs {r['rate_maps_per_s']:,.0f} maps/s per vCPU ({band})\n")
    if st["common_rate"] is not None:
        w(f"  one rate explains both: {st['common_rate']:,.0f} maps/s per vCPU\n")
    else:
        ratio = f"{st['ratio_measured']:.2f}" if st["ratio_measured"] is not None else "-"
        w(f"  no one rate explains both: the seed's drops need new/old extra cost {st['ratio_needed']:.1f}x, "
          f"the testbed measures {ratio}x\n")
    w(f"  {'':16} {'seed single':>12} {'seed multi':>11} {'predicted (own rate)':>21} {'(one rate)':>11}\n")
    for which, r in st["rows"].items():
        if "why" in r:
            continue
        own, com = r.get("predicted_multi_pct_own_rate"), r.get("predicted_multi_pct_common_rate")
        w(f"  {which + ' ' + r['design']:16} {r['seed_single_pct']:>11.2f}% {r['seed_multi_pct']:>10.2f}% "
          f"{(f'{own:.2f}%' if own is not None else '-'):>21} {(f'{com:.2f}%' if com is not None else '-'):>11}\n")
    for which, r in st["rows"].items():
        if "why" in r:
            continue
        need = r.get("rate_for_seed_multi")
        w(f"  {which}: the seed's multi-core {r['seed_multi_pct']:.2f}% " +
          (f"needs {need:,.0f} maps/s per vCPU under this model\n" if need else
           "is reached by no map rate under this model (the model's multi-core drop is never below its single-core "
           "drop without a lock, and a lock's may saturate first)\n"))
