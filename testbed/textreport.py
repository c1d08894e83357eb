"""What the commands print: a run's report, the experiments' tables, and the command that replays a run.

Every function here takes results (plain dictionaries, ``testbed.results``) and
writes text; none starts or changes anything.
"""

from __future__ import annotations

import dataclasses
import sys


def print_sample(sample, cfg) -> None:
    d = sample.as_dict()
    tag = " (warm-up)" if sample.warmup else ""
    print(f"  t={d['t']:6.2f}s  ops total={d['total']:>12,}  min={d['min']:>11,}  max={d['max']:>11,}{tag}",
          flush=True)


def wide() -> bool:
    """--wide: the tables show every column (``output.Terminal``)."""
    return bool(getattr(sys.stdout, "wide", False))


def print_result(res: dict, out=None, closing: bool = True) -> None:
    """A run's report; ``closing``: end with its own verdict line (a command that ends with
    ``findings.closing`` passes False)."""
    out = out or sys.stdout
    t = res["totals"]
    w = out.write
    w(f"variant {res['variant']}  vcpus {res['vcpus']}  workload {res['workload']}  seed {res['seed']}\n")
    st, sc, mem = res["startup"], res["sched"], res["memory"]
    w(f"start-up {st.get('total_s', 0):.2f} s (compile {st.get('compile_s', 0):.2f} s, fork "
      f"{st.get('fork_s', 0):.2f} s: {st.get('fork_ms_median', 0):.1f} ms per vCPU, attach and pin "
      f"{st.get('attach_s', 0):.2f} s)  measured {t['measured_s']:.2f} s\n")
    w(f"scheduling: {sc['model']} ({sc['description']})"
      + (f", time slice {sc['timeslice_us']:g} us" if sc.get("timeslice_us") else "") + "\n")
    more = wide()
    # ops and ops/s count the measured window; run s and off-cpu s the whole run, warm-up included
    w(f"{'vcpu':>4} {'cpu':>3} {'ops':>12} {'ops/s':>11} {'maps':>12} " + (f"{'hash%':>6} " if more else "")
      + f"{'tlb miss':>11} {'lock cont':>10} {'run s':>6} {'wait s':>6} " + (f"{'switch':>6} " if more else "")
      + f"{'starved':>7}\n")
    rows = res["per_vcpu"]
    shown = rows if len(rows) <= 32 else rows[:8] + rows[-8:]
    for d in shown:
        hr = 100.0 * d["hash_hits"] / d["maps"] if d["maps"] else 0.0
        if shown is not rows and d is rows[-8]:
            w(f"  ... {len(rows) - 16} more vCPUs (all in --json)\n")
        w(f"{d['vcpu']:>4} {d['core']:>3} {d['ops']:>12,} {d['ops_per_s']:>11,.0f} {d['maps']:>12,} "
          + (f"{hr:>6.1f} " if more else "") + f"{d['tlb_misses']:>11,} {d['lock_contended']:>10,} "
          f"{d['run_s']:>6.2f} {d['wait_s']:>6.2f} " + (f"{d['switches']:>6} " if more else "")
          + f"{d['starved_s'] if d['starved_s'] is not None else '-':>7}\n")
    w("  (ops, ops/s: the measured window; run s, wait s: time on and off a CPU, warm-up included; "
      "'testbed explain COLUMN')\n")
    f = res["fairness"]
    spread = f"{f['run_spread']:.2f}" if f["run_spread"] is not None else "-"
    w(f"fairness: run time per vCPU {f['run_s_min']:.3f}..{f['run_s_max']:.3f} s (spread {spread} of the median), "
      f"longest single wait for a CPU {f['max_wait_s']:.3f} s, longest without progress {f['starved_max_s']} s\n")
    w(f"memory: parent peak {mem['parent_peak_mib']} MiB, vCPUs' unique memory {mem['vcpus_uss_mib']} MiB "
      f"({mem['vcpu_uss_mib_median']} MiB each, {mem['vcpus_uss_measured']} measured); stop: drained in "
      f"{res['stop'].get('drain_s', 0)} s (bound {res['stop'].get('deadline_s', '-')} s, "
      f"{res['stop'].get('lock_waiters_at_stop', 0)} queued for the lock)\n")
    w(f"total ops {t['ops']:,}  ops/s {t['ops_per_s']:,.0f}  ns/op per vCPU "
      f"{(1e9 * res['vcpus'] / t['ops_per_s']) if t['ops_per_s'] else float('nan'):.1f}\n")
    lat = res["latency"]
    if lat["samples"]:
        w(f"map latency (cycles, 1 in {lat['sampled_every_maps']} maps): p50<={lat['p50']} p90<={lat['p90']} "
          f"p99<={lat['p99']} p99.9<={lat['p99_9']} max={lat['max']}\n")
    worst = lat.get("worst_per_s")
    if worst:
        w(f"worst map latency per second (cycles, sampled maps): {' '.join(f'{x:,}' for x in worst[:12])}"
          + (f" ... ({len(worst)} s)" if len(worst) > 12 else "") + "\n")
    lock = res.get("lock")
    if lock:
        w(f"lock {lock['kind']}: {describe_lock(lock)}\n")
    irq = res.get("irq")
    if irq:
        w(f"interrupts at {irq['rate']:g}/s per vCPU: {irq['taken']:,} taken ({irq['inside']:,} inside a map or "
          f"unmap), {irq['deferred']:,} deferred (arrived with interrupts disabled), {irq['maps']:,} nested maps\n")
    nmi = res.get("nmi")
    if nmi:
        w(f"NMIs at {nmi['rate']:g}/s per vCPU: {nmi['taken']:,} taken ({nmi['inside']:,} inside a map or unmap, "
          f"{nmi['inside_irqs_off']:,} of them with interrupts off), {nmi['maps']:,} nested maps, "
          f"{nmi['deadlocks']:,} deadlocks\n")
    exp = res.get("exposure")
    if exp:
        w(f"exposure: {describe_exposure(exp)}\n")
    bad = {k: v for k, v in res["checks"].items() if v}
    if bad or more:
        checks = ", ".join(f"{k}={v}" for k, v in (res["checks"] if more else bad).items())
    else:
        checks = f"all {len(res['checks'])} at 0 (--wide or --json lists them)"
    w(f"checks: {checks}\n")
    if res["failure"]:
        w(f"failure: {res['failure']['message']}\n")
        if res["failure"].get("live"):
            w(f"  live mappings: {describe_live(res['failure']['live'])}\n")
    if res["interrupted"]:
        w(f"interrupted by {res['interrupted']}: results are partial\n")
    if res["verdict"] != "SUCCESS":
        w(f"replay: {replay_command(res['config'])}\n")
    if closing:
        w(f"verdict: {res['verdict']}\n")


def describe_exposure(exp: dict) -> str:
    """How long an unmapped frame stays reachable (results.exposure_summary), in one line."""
    if exp["always"]:
        return f"the direct map reaches every frame ({exp['frames_reachable_mean']:,}), always"
    if not exp["samples"]:
        return "no unmapped frame sampled"
    reach = exp["frames_reachable_mean"]
    line = (f"an unmapped frame stays reachable {exp['mean_cycles']:,.0f} cycles / {exp['mean_ops']:.1f} ops on "
            f"average, at most {exp['max_cycles']:,} cycles / {exp['max_ops']:,} ops ({exp['samples']:,} sampled)")
    if reach is not None:
        line += f"; {reach:.1f} frames reachable at the sampled instants"
    return line


def describe_lock(lock: dict) -> str:
    """Handoff cost and fairness of a run's lock, on one line."""
    def cycles(x):
        return "-" if x is None else f"{x:,.0f}"

    acq = lock["acquisitions_per_vcpu"]
    return (f"{lock['acquisitions']:,} acquisitions ({100 * lock['contended_rate']:.1f}% contended), "
            f"{lock['handoffs']:,} handoffs, {lock.get('reacquired', 0):,} taken back by the releaser while others "
            f"waited, mean handoff {cycles(lock['handoff_mean_cycles'])} cycles, "
            f"mean spin {cycles(lock['spin_mean_cycles'])} cycles, mean hold {cycles(lock['hold_mean_cycles'])} "
            f"cycles; fairness: per-vCPU acquisitions {min(acq):,}..{max(acq):,}, Jain index "
            f"{lock['jain_fairness']:.3f}")


def describe_live(live, limit: int = 24) -> str:
    """'slot 3 -> mfn 17, slot 0 -> mfn 0 (x255)': mapcache slots, or direct-map addresses."""
    from collections import Counter

    from .abi import MAPCACHE_VA

    counts = Counter((va, mfn) for va, mfn in live)
    parts = []
    for (va, mfn), k in counts.items():
        where = f"slot {va - MAPCACHE_VA}" if va >= MAPCACHE_VA else f"direct {va}"
        parts.append(f"{where} -> mfn {mfn}" + (f" (x{k})" if k > 1 else ""))
    more = f", ... {len(parts) - limit} more" if len(parts) > limit else ""
    return ", ".join(parts[:limit]) + more


def replay_command(cfg: dict, command: str = "run", extra: tuple = ()) -> str:
    """The command line that replays a run of ``cfg`` (a result's "config"): the options that
    identify the run, then every declared run option whose value is not its default
    (``config.RunConfig``), then ``extra`` (a command's own options, e.g. stress's)."""
    from .config import RunConfig

    variant = "--variants" if command == "stress" else "--variant"
    parts = [f"testbed {command}", f"{variant} {cfg['variant']}", f"--vcpus {cfg['vcpus']}",
             f"--duration {cfg['duration']:g}", f"--seed {cfg['seed']}", f"--workload {cfg['workload']}"]
    if cfg.get("lock"):
        parts.append(f"--lock {cfg['lock']}")
    for f in dataclasses.fields(RunConfig):
        if not f.metadata.get("cli") or f.name in ("duration", "workload") or f.name not in cfg:
            continue
        value = cfg[f.name]
        if value == f.default or value is None:
            continue
        flag = f.metadata.get("flag") or "--" + f.name.replace("_", "-")
        parts.append(flag if value is True else f"{flag} {value:g}" if isinstance(value, float) else f"{flag} {value}")
    return " ".join([*parts, *extra])


def print_compare(res: dict, out=None) -> None:
    """The drop table (mean of the paired repetitions and its interval) and one findings line per scope."""
    out = out or sys.stdout
    from . import stats
    from .findings import compare_findings, fmt_ci

    w = out.write
    h = res["host"]
    width = max([12] + [len(r["variant"]) + 1 for r in res["rows"]])
    w(f"\nPerformance drop against {res.get('baseline', 'the baseline')} ({res['workload']} workload; host "
      f"{h['cpu_model']}, {h['physical_cores']} cores; mean of {res['repeat']} paired repetitions "
      f"[{stats.method()}])\n\n")
    cols = res.get("columns") or {"single": {"active_vcpus": 1, "domain_vcpus": 1},
                                  "multi": {"active_vcpus": res["vcpus_multi"], "domain_vcpus": res["vcpus_multi"]}}
    heads = [f"{scope}-core ({c['active_vcpus']} of {c['domain_vcpus']} vCPUs)" for scope, c in cols.items()]
    w(f"{'perf drop':{width}} {heads[0]:>28} {heads[1]:>28} {'cycles/map extra':>18}\n")
    for row in res["rows"]:
        cells = []
        for s_ in ("single", "multi"):
            if not row[s_ + "_drops_pct"]:
                cells.append("-")
                continue
            mean = row.get(s_ + "_mean_drop_pct")
            mean = row[s_ + "_drop_pct"] if mean is None else mean
            ci = row.get(s_ + "_ci_pct")
            cells.append(f"{mean:+.2f}% " + (fmt_ci(ci) if ci else f"(n={len(row[s_ + '_drops_pct'])})"))
        extra = row.get("extra_cycles_per_map")
        extra = f"{extra:+,.0f} +/- {row['extra_cycles_per_map_spread']:,.0f}" if extra is not None else "-"
        w(f"{row['variant']:{width}} {cells[0]:>28} {cells[1]:>28} {extra:>18}\n")
    w(f"(cycles/map extra: cycles per map over {res.get('baseline', 'the baseline')} on 1 vCPU, median of the "
      "repetitions paired by seed)\n\n")
    for scope, c in cols.items():
        if "sched" in c:
            w(f"{scope}-core: a {c['domain_vcpus']}-vCPU domain, {c['active_vcpus']} active ({c['sched']}), "
              f"{c['domain_vcpus'] - c['active_vcpus']} blocked idle (state only, no CPU)\n")
    if any(row.get("single_ci_pct") is None and row["single_drops_pct"] for row in res["rows"]):
        w(f"(n=N: not enough repetitions to tell; {stats.MIN_REPEAT} give an interval)\n")
    lines = res.get("findings")
    if lines is None:
        lines = compare_findings(res["rows"], res["repeat"], res["vcpus_multi"])
    for line in lines:
        w(f"findings: {line}\n")


def print_scale(res: dict, out=None) -> None:
    out = out or sys.stdout
    w = out.write
    more = wide()
    width = max([10] + [len(r["variant"]) for r in res["rows"]])
    w(f"{'variant':{width}} {'vcpus':>5} {'sched':>10} {'ops/s':>13} " + (f"{'linear':>13} " if more else "")
      + f"{'effic.':>6} {'p99 cyc':>8} {'starved s':>9} {'handoff cyc':>11} {'fairness':>8}\n")
    for r in res["rows"]:
        p99 = f"{r['p99_cycles']:,.0f}" if r["p99_cycles"] is not None else "-"
        handoff = f"{r['lock_handoff_cycles']:,.0f}" if r["lock_handoff_cycles"] is not None else "-"
        fair = f"{r['lock_fairness']:.3f}" if r["lock_fairness"] is not None else "-"
        w(f"{r['variant']:{width}} {r['vcpus']:>5} {r['sched']:>10} {r['ops_per_s']:>13,.0f} "
          + (f"{r['linear']:>13,.0f} " if more else "")
          + f"{r['efficiency']:>6.3f} {p99:>8} {r['starved_max_s']:>9.2f} {handoff:>11} {fair:>8}\n")
    if not more:
        w("  (effic.: ops/s against n x one vCPU's, the linear line; linear itself with --wide, in the CSV and "
          "the JSON)\n")
    print_models({r["sched"] for r in res["rows"]}, out)


def print_timers(res: dict, out=None) -> None:
    out = out or sys.stdout
    w = out.write
    w(f"{'variant':12} {'sched':>10} {'timers set':>12} {'-ETIME':>10} {'rate':>8} {'worst streak':>12} "
      f"{'panics':>7} {'mean path us':>12}\n")
    for r in res["rows"]:
        path = f"{r['mean_path_us']:.2f}" if r["mean_path_us"] is not None else "-"
        w(f"{r['variant']:12} {r['sched']:>10} {r['timer_sets']:>12,} {r['etime']:>10,} "
          f"{100 * r['etime_rate']:>7.3f}% {r['worst_streak']:>12} {r['panics']:>7} {path:>12}\n")
    for key in ("domain", "timers"):
        if res.get("xen", {}).get(key):
            w(f"models {key}: {res['xen'][key]}\n")
    for r in res["rows"]:
        w(f"{r['variant']} ({r['sched']} scheduling): "
          f"{'PANIC: a FreeBSD 10 guest would crash' if r['panics'] else 'no panic'} "
          f"(worst streak {r['worst_streak']} of {res['panic_streak']}; {r.get('late', 0):,} timers armed late)\n")
    print_models({r["sched"] for r in res["rows"]}, out)


def print_models(models, out=None) -> None:
    """Say what each scheduling model in a table means: the figures depend on it."""
    out = out or sys.stdout
    from .config import SCHED_MODELS

    for m in ("hypervisor", "host"):
        if m in models:
            out.write(f"  {m}: {SCHED_MODELS[m]}\n")




COSTS = ("cost_flush_one", "cost_flush_all", "cost_walk", "cost_refill")


def print_compare_sweep(res: dict, option: str, out=None) -> None:
    """compare --sweep: the table once per value, with the costs it ran under, then the verdict lines."""
    out = out or sys.stdout
    for t in res["sweep"]["tables"]:
        costs = ", ".join(f"{k.replace('_', '-')} {t['config'][k]}" for k in COSTS)
        out.write(f"\n=== {option}={t['sweep']['value']} ({costs})\n")
        print_compare(dict(res, rows=t["rows"]), out)
    out.write("\n")
    for line in res["sweep"]["verdict"]:
        out.write(f"findings: {line}\n")


def variants_table() -> list[dict]:
    """Every variant and control: what ``testbed variants --json`` prints."""
    from . import variants

    out = []
    for v in variants.VARIANTS.values():
        d = {"name": v.name, "kind": "real" if v.kind == "design" else v.kind, "description": v.description}
        if v.kind == "xen":
            d.update(usage="--variant xen --xen-tree DIR [--xen-patch FILE]..., or xen:DIR[+PATCH]... in a list")
        elif v.control:
            d.update(caught_by=list(v.catches), options=v.cli_options)
        else:
            d.update(default_entries=v.module.DEFAULT_ENTRIES, default_entries_source=v.module.GEOMETRY["entries"],
                     geometry=dict(v.module.GEOMETRY), locks=list(v.locks), baseline=v.baseline)
        out.append(d)
    return out


def print_variants(out=None, as_json: bool = False) -> None:
    out = out or sys.stdout
    from . import variants

    if as_json:
        import json

        out.write(json.dumps(variants_table(), indent=2) + "\n")
        return
    for v in variants.VARIANTS.values():
        m = v.module
        if v.kind == "xen":
            extra = "entries and hash from the tree; --xen-tree DIR [--xen-patch FILE]..., or xen:DIR+PATCH in lists"
        elif v.control:
            extra = f"caught by: {', '.join(v.catches)}" + (f"; needs {' '.join(v.cli_options)}" if v.options else "")
        else:
            extra = f"entries {m.DEFAULT_ENTRIES}" + (f", --lock {'|'.join(v.locks)}" if v.locks else "") + (
                ", the baseline" if v.baseline else "")
        out.write(f"{v.name:20} {v.description} [{extra}]\n")     # wrapped at 100 columns by output.Terminal
        if not v.control:
            for key in ("entries", "hash", "pool"):
                out.write(f"{'':20}   {key}: {m.GEOMETRY[key]}\n")
    out.write("\nwith more vCPUs than CPUs (--oversubscribe), --sched picks how they share the CPUs:\n")
    print_models({"hypervisor", "host"}, out)


def print_workloads(out=None) -> None:
    out = out or sys.stdout
    from .config import WORKLOADS

    for name, (_, desc) in WORKLOADS.items():
        out.write(f"{name:10} {desc}\n")


def print_cleanup(out=None) -> None:
    """testbed cleanup: remove the segments of dead runs, and say what was removed and what was kept."""
    out = out or sys.stdout
    from .shared import list_segments, remove_stale

    removed = remove_stale()
    live = [n for n in list_segments() if n not in removed]
    for line in ([f"removed stale segment /dev/shm/{n}" for n in removed]
                 + [f"kept /dev/shm/{n}: its owner is still running" for n in live]):
        out.write(line + "\n")
    if not removed and not live:
        out.write("no testbed segments\n")


def listing_verdict(command: str) -> str:
    """The closing line of the listings: they run no check."""
    from . import variants

    what = {"variants": f"{len(variants.VARIANTS)} variants and controls listed",
            "workloads": "the workloads listed", "cleanup": "shared-memory segments of dead runs removed"}[command]
    return f"verdict: SUCCESS (nothing to check); figures: {what}"
