"""Run results: plain data that describes itself (docs/variants.md, conventions 8).

Schema history (bump SCHEMA on any change a reader must know about):

- 1: first version. A run (kind "testbed.run"): schema, kind, variant, vcpus,
  seed, workload, config, host, placement, startup, window, samples, totals,
  fairness, per_vcpu, latency, checks, failure, partial, interrupted, verdict.
  Repetitions ("testbed.repeat"), compare, scale, timers and stress results carry
  schema, kind, seed, workload, config and host, their own rows, and every
  run they made under "runs". The JSON Schema is ``testbed/schema.json``.
- 2: a run records how its vCPUs were scheduled and started. "sched": the
  model (dedicated, hypervisor or host), the CPUs, the time slice (hypervisor
  only) and what the model means. Per vCPU: run_s (time on a CPU), wait_s
  (time waiting for one), switches and max_wait_s (hypervisor), starved_s
  (longest time without progress as the watchdog saw it, at
  watch_resolution_s), fork_ms, attach_ms, uss_kib. "fairness" adds the
  spread of run time; "startup" the per-vCPU fork and attach figures;
  "memory" the parent's peak and the vCPUs' summed unique memory; "stop" how
  long the vCPUs took to stop (drain_s), the lock queue at the stop and the
  deadline; "victims" the vCPUs killed and why. checks adds sched_violations
  (switches that found a vCPU holding a mapping or a lock).
  Also in 2: "lock" in a run (the lock's handoff cost
  and fairness, null for a variant without a lock), "lock" in the config,
  "lock" and "label" in compare and scale rows and their runs (rows are
  labelled ``variant:lock`` when --lock names locks). compare, scale and
  timers results carry "partial" (true when a signal stopped the experiment:
  the rows and runs are the ones finished) and "interrupted" (the signal, or
  null); the scale CSV ends each row with "partial".
  Also in 2, added keys only (what the checks are is ``testbed/oracle.py``):
  checks held_stale_translations and reused_held_slots, the same in totals
  with held_rechecks, config refcount_wrap, config dom_layout (the layout of
  a variant's domain words, --dom-layout; null for a variant with one).
  Also in 2, added keys only: "irq" in a run (simulated interrupts taken,
  inside a map or unmap, deferred, and the handlers' nested maps; null without
  --irq-rate), config irq_rate, totals and per vCPU irq_taken, irq_inside,
  irq_deferred, irq_maps.
  Also in 2, added keys only (docs/hosts.md): host "facts" (NUMA nodes and
  distances, packages, SMT, cpufreq driver, governor and boost, virtualization,
  vulnerabilities, isolcpus, nohz_full, randomize_va_space, THP, offline CPUs,
  cpuset), config placement, numa_home and frames_numa; in a run
  "vcpu_placement" (per vCPU: cpu, core, package, node) and
  "memory_placement" (the pages of the domain's lines, the frames and each
  vCPU's rows per node, read back after the run); in every result written by
  a command, "command" (argv and cwd that reproduce it, for 'testbed rerun').
  Also in 2, added keys only (docs/cost-model.md): "nmi" in a run (NMIs taken,
  inside a map or unmap, of those with interrupts off, the handlers' maps and
  the deadlocks found; null without --nmi-rate), "exposure" (how long an
  unmapped frame stays reachable, and the frames reachable at sampled
  instants), "tlb_model" (the one-slot flush under --pcid, the guest's pages);
  config nmi_rate, recursive, guest_pages, pcid, cost_invpcid; totals and per
  vCPU nmi_irqs_off, guest_touches, guest_walks, deadlocks, exposure_*.
  Also in 2, added keys only: "label" in a run (the variant's name, or for a Xen tree's own code
  its build's, e.g. xen(af01d33+seed)), "xen" (the tree, commit, file and patch hashes, skipped
  hunks and failed BUILD_BUG_ONs of the code a xen run ran; null otherwise), config xen_tree and
  xen_patches, totals and per vCPU map_domain_page_count, domain_page_tlb_flush, xen_assertions,
  xen_directmap_maps, xen_pte_writes, checks xen_assertions.
  Also in 2, added keys only: "figures" (what the measurements say, the part
  of the closing verdict line after "figures:") in every result; "verdict"
  (SUCCESS or FAILURE of the checks) in compare, scale, timers and stress
  results; compare's "findings" (a line per scope), "interval" (how the
  intervals are made), "min_repeat", and per row and scope *_mean_drop_pct and
  *_ci_pct (null below min_repeat repetitions; *_significant is then null, and
  otherwise says whether the interval excludes 0); scale rows' ops_per_s_ci;
  a run's latency.worst_per_s (the slowest map in each second, every map
  seen). Files list "verdict" and the headline figures first (``ordered``).
  Also in 2, added keys only: compare rows extra_cycles_per_map and its
  spread (cycles per map over the baseline on one vCPU); kind
  "testbed.predict" (``testbed predict --json``: per design the model, its
  inputs with spreads, the fit, residuals, the curve and the measured points
  with predicted, measured and error; the ping-pong, the timers and seed
  tables, the limits, and every run).
"""

from __future__ import annotations

import json
import math

import numpy as np

from . import abi, hostinfo, latwatch, oracle
from . import variants as registry

SCHEMA = 2
KIND = "testbed.run"



def _percentile_from_hist(hist: np.ndarray, q: float) -> int | None:
    total = int(hist.sum())
    if total == 0:
        return None
    rank = math.ceil(q * total)
    acc = 0
    for b, c in enumerate(hist):
        acc += int(c)
        if acc >= rank:
            return 1 << (b + 1)          # upper bound of the log2 bin, in cycles
    return 1 << len(hist)


def latency(hist: np.ndarray, max_cycles: int, every: int) -> dict:
    """Map latency from the log2 histogram: percentiles are bin upper bounds (cycles)."""
    h = hist.sum(axis=0) if hist.ndim == 2 else hist
    return {
        "unit": "cycles",
        "sampled_every_maps": 1 << every,
        "samples": int(h.sum()),
        "p50": _percentile_from_hist(h, 0.50),
        "p90": _percentile_from_hist(h, 0.90),
        "p99": _percentile_from_hist(h, 0.99),
        "p99_9": _percentile_from_hist(h, 0.999),
        "max": int(max_cycles),
        "histogram_log2": [int(x) for x in h],
    }


def build(*, cfg, cores, stats, hist, samples, window, ops_at, lost_writes, writes_reported, writes_counted,
          variant_checks, failure, interrupted, startup, exitcodes, complete, extra=None, runtime=None,
          module=None) -> dict:
    """``module``: the design's module, when the caller has it (a run plan's), or looked up by name."""
    module = module or registry.get(cfg.variant).module
    n = cfg.vcpus
    runtime = runtime or {}
    fork_ns = runtime.get("fork_ns") or []
    starved = runtime.get("starved_s") or []
    totals = {name: int(stats[:, col].max() if col in abi.MAX_COUNTERS else stats[:, col].sum())
              for col, name in abi.COUNTER_NAMES.items()}
    measured_s = float(window[1] - window[0])
    if len(ops_at[0]) == n and measured_s > 0:
        window_ops = np.asarray(ops_at[1]) - np.asarray(ops_at[0])
    else:
        window_ops = np.zeros(n, dtype=np.int64)
    # the worker folds the kernel's running maximum into the run's between chunks (testbed/latwatch.py)
    totals["lat_max_cycles"] = max((latwatch.run_max(stats[v]) for v in range(n)), default=0)
    totals["all_ops"] = totals.pop("ops")
    totals["ops"] = int(window_ops.sum())
    totals["ops_per_s"] = float(window_ops.sum() / measured_s) if measured_s > 0 else 0.0
    totals["measured_s"] = measured_s
    totals["writes_counted_in_frames"] = writes_counted
    maps = totals["maps"]
    totals["hash_hit_rate"] = totals["hash_hits"] / maps if maps else 0.0
    holds = totals["lock_hold_samples"]
    totals["lock_hold_mean_cycles"] = totals["lock_hold_cycles"] / holds if holds else None

    per_vcpu = []
    for v in range(n):
        row = stats[v]
        d = {name: int(row[col]) for col, name in abi.COUNTER_NAMES.items()}
        d["all_ops"] = d.pop("ops")
        d["lat_max_cycles"] = latwatch.run_max(row)
        d.update(
            vcpu=v, core=int(cores[v]), ops=int(window_ops[v]),
            ops_per_s=float(window_ops[v] / measured_s) if measured_s > 0 else 0.0,
            involuntary_ctx_switches=int(row[abi.S_NIVCSW]), voluntary_ctx_switches=int(row[abi.S_NVCSW]),
            pid=int(row[abi.S_PID]), status=abi.STATUS_NAMES.get(int(row[abi.S_STATUS]), int(row[abi.S_STATUS])),
            exitcode=exitcodes[v] if v < len(exitcodes) else None,
            run_s=row[abi.S_RUN_NS] / 1e9, wait_s=row[abi.S_WAIT_NS] / 1e9, switches=int(row[abi.S_SWITCHES]),
            max_wait_s=row[abi.S_MAX_WAIT_NS] / 1e9, cpu_s=row[abi.S_CPU_NS] / 1e9,
            starved_s=round(starved[v], 3) if v < len(starved) else None,
            fork_ms=round(fork_ns[v] / 1e6, 3) if v < len(fork_ns) else None,
            attach_ms=round((row[abi.S_T_READY] - row[abi.S_T_ENTRY]) / 1e6, 3) if row[abi.S_T_ENTRY] else None,
            uss_kib=int(row[abi.S_USS_KB]),
        )
        per_vcpu.append(d)
    ops = [d["ops"] for d in per_vcpu]
    run_s = [d["run_s"] for d in per_vcpu]
    mid = float(np.median(run_s)) if run_s else 0.0
    fairness = {
        "min_ops": int(min(ops)) if ops else 0,
        "max_ops": int(max(ops)) if ops else 0,
        "starvation": bool(ops and max(ops) > 0 and min(ops) < max(ops) / 2),
        "run_s_min": min(run_s, default=0.0), "run_s_median": mid, "run_s_max": max(run_s, default=0.0),
        # the spread of time on a CPU across vCPUs, relative to the median: 0 is perfectly fair
        "run_spread": (max(run_s) - min(run_s)) / mid if mid > 0 else None,
        "starved_max_s": max((d["starved_s"] for d in per_vcpu if d["starved_s"] is not None), default=None),
        "max_wait_s": max((d["max_wait_s"] for d in per_vcpu), default=0.0),
    }
    forks = sorted(fork_ns)
    if forks:
        tenth = max(1, len(fork_ns) // 10)
        startup = dict(startup)
        startup.update(
            fork_ms_median=float(np.median(forks)) / 1e6, fork_ms_max=forks[-1] / 1e6,
            # forking must not slow down as vCPUs pile up: the first tenth against the last
            fork_ms_first_tenth=float(np.median(fork_ns[:tenth])) / 1e6,
            fork_ms_last_tenth=float(np.median(fork_ns[-tenth:])) / 1e6,
            attach_ms_median=float(np.median([d["attach_ms"] or 0.0 for d in per_vcpu])),
        )
    uss = [d["uss_kib"] for d in per_vcpu if d["uss_kib"] > 0]
    # Beyond 32 vCPUs only a sample measures its unique memory: the sum is then the median times n.
    uss_sum = sum(uss) if len(uss) == n else (float(np.median(uss)) * n if uss else 0.0)
    memory = {"parent_peak_mib": round(runtime.get("parent_peak_kib", 0) / 1024, 1),
              "vcpus_uss_mib": round(uss_sum / 1024, 1), "vcpus_uss_measured": len(uss),
              "vcpu_uss_mib_median": round(float(np.median(uss)) / 1024, 2) if uss else None}

    checks = oracle.checks(totals=totals, stats=stats, lost_writes=lost_writes, writes_reported=writes_reported,
                           writes_counted=writes_counted, variant_checks=variant_checks, failure=failure,
                           extra=extra, complete=complete)
    partial = oracle.partial(checks, failure, interrupted)
    verdict = oracle.verdict(checks, failure, interrupted)

    return {
        "schema": SCHEMA,
        "kind": KIND,
        "variant": cfg.variant,
        "label": module.label(cfg),
        "xen": module.describe(cfg),
        "lock": lock_summary(getattr(cfg, "lock", None), totals, per_vcpu),
        "irq": irq_summary(getattr(cfg, "irq_rate", 0.0), totals),
        "nmi": nmi_summary(getattr(cfg, "nmi_rate", 0.0), totals),
        "exposure": exposure_summary(cfg, totals, module),
        "tlb_model": tlb_model(cfg, totals),
        "vcpus": n,
        "seed": cfg.seed,
        "workload": cfg.workload,
        "config": cfg.as_dict(),
        "host": hostinfo.host(),
        "placement": [int(c) for c in cores],
        "sched": runtime.get("sched", {"model": "dedicated", "requested": None, "cpus": len(set(cores)),
                                       "timeslice_us": None, "description": "one vCPU per CPU"}),
        "startup": {k: round(v, 4) for k, v in startup.items()},
        "memory": memory,
        "stop": runtime.get("stop", {}),
        "victims": {str(k): v for k, v in (runtime.get("victims") or {}).items()},
        "watch_resolution_s": runtime.get("watch_resolution_s"),
        "window": {"warmup_s": cfg.warmup, "start_s": window[0], "end_s": window[1]},
        "samples": [s.as_dict() for s in samples],
        "totals": totals,
        "fairness": fairness,
        "per_vcpu": per_vcpu,
        "latency": dict(latency(hist, max((d["lat_max_cycles"] for d in per_vcpu), default=0), cfg.lat_every),
                        worst_per_s=list(runtime.get("lat_worst_per_s") or [])),
        "checks": checks,
        "failure": failure,
        "partial": partial,
        "interrupted": interrupted,
        "verdict": verdict,
        **(extra or {}),
    }


def irq_summary(rate: float, totals: dict) -> dict | None:
    """Simulated interrupts of a run with --irq-rate (testbed/irq.py); None without.

    taken: handlers that ran (inside: of those, taken between a variant's steps
    inside a map or unmap); deferred: arrivals while the variant had interrupts
    disabled, taken when it enabled them; maps: the handlers' maps, each nested
    inside whatever its vCPU was doing.
    """
    if not rate:
        return None
    return {"rate": rate, "taken": totals["irq_taken"], "inside": totals["irq_inside"],
            "deferred": totals["irq_deferred"], "maps": totals["irq_maps"]}


def nmi_summary(rate: float, totals: dict) -> dict | None:
    """Simulated NMIs of a run with --nmi-rate (testbed/irq.py); None without.

    taken: handlers that ran (never deferred); inside: of those, taken between a
    variant's steps inside a map or unmap; inside_irqs_off: of those, taken while
    the variant had interrupts disabled (what local_irq_save cannot keep out);
    maps: the handlers' maps; deadlocks: handlers that found the lock their own
    CPU holds.
    """
    if not rate:
        return None
    return {"rate": rate, "taken": totals["irq_taken"], "inside": totals["irq_inside"],
            "inside_irqs_off": totals["nmi_irqs_off"], "maps": totals["irq_maps"], "deadlocks": totals["deadlocks"]}


def exposure_summary(cfg, totals: dict, module=None) -> dict:
    """How long a frame stays reachable after its last unmap (kernels.expose), and how many are.

    Sampled: at the points where the loop reads the clock (every 16 operations,
    every operation on the hypercall workloads) one unmapped frame is followed
    until neither its PTE nor this CPU's TLB reaches it; the durations are
    counted from the first look after the unmap, to the first look that finds it
    gone (a resolution of one look). The direct map reaches every frame, always:
    its exposure is the maximum by definition, not measured.
    """
    if (module or registry.get(cfg.variant).module).NAME == "directmap":
        return {"always": True, "frames_reachable_mean": cfg.frames, "samples": 0, "mean_cycles": None,
                "max_cycles": None, "mean_ops": None, "max_ops": None}
    n, instants = totals["exposure_samples"], totals["exposure_instants"]
    return {"always": False, "samples": n,
            "mean_cycles": totals["exposure_cycles"] / n if n else None, "max_cycles": totals["exposure_max_cycles"],
            "mean_ops": totals["exposure_ops"] / n if n else None, "max_ops": totals["exposure_max_ops"],
            "instants": instants,
            "frames_reachable_mean": totals["exposure_reachable"] / instants if instants else None}


def tlb_model(cfg, totals: dict) -> dict:
    """The TLB cost model as run: the one-slot flush under --pcid, and the guest's own pages."""
    from . import tlb

    pcid = getattr(cfg, "pcid", "off")
    per = tlb.PCID_MODES.get(pcid, 1)
    return {"pcid": pcid, "one_slot_flush": "invlpg" if per == 1 else f"{per} INVPCID",
            "invpcids": totals["tlb_flush_one"] * per if per > 1 else 0,
            "guest_pages": getattr(cfg, "guest_pages", 0) if cfg.workload in ("guest", "timers") else 0,
            "guest_touches": totals["guest_touches"], "guest_walks": totals["guest_walks"]}


def lock_summary(kind, totals: dict, per_vcpu: list[dict]) -> dict | None:
    """The lock's handoff cost and fairness, for a run whose variant took a lock; None otherwise.

    A handoff is an acquisition of a lock another vCPU released while vCPUs
    waited; its cost, the cycles from that release to the acquisition.
    ``reacquired`` counts the releaser taking the lock back ahead of the
    waiters (barging). Fairness is the
    spread of acquisitions across vCPUs: Jain's index (sum x)**2 / (n sum x**2),
    1 when every vCPU took the lock as often, 1/n when one took it every time.
    """
    acq = [d["lock_acquisitions"] for d in per_vcpu]
    total = sum(acq)
    if total == 0:
        return None
    handoffs = totals["lock_handoffs"]
    contended = totals["lock_contended"]
    return {
        "kind": kind,
        "acquisitions": total,
        "acquisitions_per_vcpu": acq,
        "contended_rate": contended / total,
        "handoffs": handoffs,
        "reacquired": totals["lock_reacquired"],
        "handoff_mean_cycles": totals["lock_handoff_cycles"] / handoffs if handoffs else None,
        "spin_mean_cycles": totals["lock_spin_cycles"] / contended if contended else None,
        "hold_mean_cycles": totals["lock_hold_mean_cycles"],
        "jain_fairness": total * total / (len(acq) * sum(x * x for x in acq)),
        "max_over_min": max(acq) / min(acq) if min(acq) else None,
    }


def envelope(kind: str, cfg, body: dict) -> dict:
    """A multi-run result (compare, scale, timers) that describes itself like a run does."""
    return {"schema": SCHEMA, "kind": f"testbed.{kind}", "seed": cfg.seed, "workload": cfg.workload,
            "config": cfg.as_dict(), "host": hostinfo.host(), **body}


def repeated(runs: list[dict]) -> dict:
    """Several repetitions of one run: the median and spread, and every run."""
    from . import stats

    rates = [r["totals"]["ops_per_s"] for r in runs]
    first = runs[0]
    body = {"variant": first["variant"], "vcpus": first["vcpus"], "repeat": len(runs),
            "ops_per_s_median": stats.median(rates), "ops_per_s_spread": stats.spread(rates),
            "verdict": "SUCCESS" if all(r["verdict"] == "SUCCESS" for r in runs) else "FAILURE", "runs": runs}
    out = {"schema": SCHEMA, "kind": "testbed.repeat", "seed": first["seed"], "workload": first["workload"],
           "config": first["config"], "host": first["host"]}
    out.update(body)
    return out


# One column set for every CSV (docs/results.md is the guide): a name means the same thing in the run,
# scale and report CSVs. report.csv (testbed/report.py) names its columns after the config keys,
# "sched_model" the scheduling model used, "sched" the one asked for, host_* the host's facts.
HOST_CSV = ("host_hostname", "host_cpu_model", "host_physical_cores", "host_kernel")
RUN_CSV = ("variant", "lock", "vcpus", "workload", "seed", "sched", "sched_model", "ops", "ops_per_s", "maps",
           "hash_hits", "tlb_misses", "tlb_flush_one", "tlb_flush_all", "lock_acquisitions", "lock_contended",
           "lock_spin_cycles", "p50_cycles", "p99_cycles", "max_cycles", "violations", "verdict", "partial") + HOST_CSV
SCALE_CSV = ("variant", "lock", "vcpus", "workload", "seed", "sched", "sched_model", "ops_per_s", "linear",
             "efficiency", "p99_cycles", "spread", "lock_contended", "starvation", "starved_max_s", "run_spread",
             "verdict", "partial") + HOST_CSV


def _host_cells(host: dict) -> dict:
    return {f"host_{k}": host.get(k) for k in ("hostname", "cpu_model", "physical_cores", "kernel")}


def _csv_value(v):
    return "" if v is None else f"{v:.4f}" if isinstance(v, float) else v


def write_run_csv(runs: list[dict], path: str) -> None:
    import csv

    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(RUN_CSV)
        for r in runs:
            t = r["totals"]
            row = {"variant": r["variant"], "lock": r["config"].get("lock"), "vcpus": r["vcpus"],
                   "workload": r["workload"], "seed": r["seed"], "sched": r["config"].get("sched"),
                   "sched_model": (r.get("sched") or {}).get("model"), "ops": t["ops"],
                   "ops_per_s": f"{t['ops_per_s']:.1f}", "p50_cycles": r["latency"]["p50"],
                   "p99_cycles": r["latency"]["p99"], "max_cycles": r["latency"]["max"],
                   "violations": r["checks"]["violations"], "verdict": r["verdict"], "partial": r["partial"],
                   **{k: t[k] for k in ("maps", "hash_hits", "tlb_misses", "tlb_flush_one", "tlb_flush_all",
                                        "lock_acquisitions", "lock_contended", "lock_spin_cycles")},
                   **_host_cells(r["host"])}
            w.writerow([_csv_value(row[k]) for k in RUN_CSV])


def write_scale_csv(res: dict, path: str) -> None:
    import csv

    asked = res["config"].get("sched")
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(SCALE_CSV)
        for row in res["rows"]:
            # a scale row's "sched" is the model used: the CSV's sched_model; "sched" is what --sched asked
            row = {**row, "sched": asked, "sched_model": row["sched"], "workload": res["workload"],
                   "seed": res["seed"], "partial": bool(res.get("partial")), **_host_cells(res["host"])}
            w.writerow([_csv_value(row.get(k)) for k in SCALE_CSV])


HOST_KEYS = ("cpu_model", "logical_cpus", "physical_cores", "kernel")
CONFIG_FREE = ("seed", "variant")     # may differ between two results that are compared


def incomparable(a: dict, b: dict) -> list[str]:
    """Why two results should not be compared: host or configuration differences."""
    out = []
    for k in HOST_KEYS:
        if a["host"].get(k) != b["host"].get(k):
            out.append(f"host {k} ({a['host'].get(k)} vs {b['host'].get(k)})")
    # as JSON holds them: a tuple in memory is a list in a file
    ca, cb = (json.loads(json.dumps(r.get("config", {}), default=str)) for r in (a, b))
    for k in sorted(set(ca) | set(cb)):
        if k not in CONFIG_FREE and ca.get(k) != cb.get(k):
            out.append(f"config {k} ({ca.get(k)} vs {cb.get(k)})")
    if a["kind"] != b["kind"]:
        out.append(f"kind ({a['kind']} vs {b['kind']})")
    return out


# What a reader wants first: the verdict and the headline figures; every other key keeps its place.
HEAD_KEYS = ("verdict", "figures", "findings", "interval", "kind", "schema", "variant", "lock", "vcpus", "seed",
             "workload", "totals", "rows", "baseline_ops_per_s", "ops_per_s_median", "ops_per_s_spread")
HEAD_TOTALS = ("ops_per_s", "ops", "measured_s", "maps", "lock_contended")


def ordered(result: dict) -> dict:
    """``result`` with the verdict and headline figures first (keys are reordered, never renamed or nested)."""
    out = {k: result[k] for k in HEAD_KEYS if k in result}
    out.update((k, v) for k, v in result.items() if k not in out)
    if isinstance(out.get("totals"), dict):
        t = out["totals"]
        out["totals"] = {**{k: t[k] for k in HEAD_TOTALS if k in t}, **t}
    return out


def _rate(r: dict) -> float:
    return r["totals"]["ops_per_s"] if "totals" in r else r.get("ops_per_s_median", float("nan"))


def diff_lines(a: dict, b: dict) -> list[str]:
    """Two results of one command in a few lines: each one's ops/s and B/A (testbed rerun)."""
    ra, rb = _rate(a), _rate(b)
    lines = [f"A: {a.get('variant', a['kind'])} seed {a['seed']}: {ra:,.0f} ops/s",
             f"B: {b.get('variant', b['kind'])} seed {b['seed']}: {rb:,.0f} ops/s"]
    if ra == ra and rb == rb and ra > 0:
        lines.append(f"B/A = {rb / ra:.4f} ({(rb / ra - 1) * 100:+.2f}%)")
    for k in ("verdict",):
        if k in a and k in b:
            lines.append(f"{k}: {a[k]} -> {b[k]}")
    return lines


def write_json(result: dict, path: str) -> None:
    with open(path, "w") as f:
        json.dump(ordered(result), f, indent=2, sort_keys=False)
        f.write("\n")


def read_json(path: str) -> dict:
    from .errors import ResultsError

    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        raise ResultsError(f"{path}: no such results file") from None
    except json.JSONDecodeError as e:
        raise ResultsError(f"{path}: not a complete results file ({e.msg} at line {e.lineno}); rerun to recreate it") from None
    if not isinstance(data, dict) or not str(data.get("kind", "")).startswith("testbed."):
        raise ResultsError(f"{path}: not a testbed results file")
    if data.get("schema") != SCHEMA:
        raise ResultsError(f"{path}: results schema {data.get('schema')} but this testbed reads schema {SCHEMA}")
    return data
