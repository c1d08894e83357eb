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


def print_result(res: dict, out=sys.stdout) -> None:
    t = res["totals"]
    w = out.write
    w(f"variant {res['variant']}  vcpus {res['vcpus']}  workload {res['workload']}  seed {res['seed']}\n")
    st, sc, mem = res["startup"], res["sched"], res["memory"]
    w(f"start-up {st.get('total_s', 0):.2f} s (compile {st.get('compile_s', 0):.2f} s, fork "
      f"{st.get('fork_s', 0):.2f} s: {st.get('fork_ms_median', 0):.1f} ms per vCPU, attach and pin "
      f"{st.get('attach_s', 0):.2f} s)  measured {t['measured_s']:.2f} s\n")
    w(f"scheduling: {sc['model']} ({sc['description']})"
      + (f", time slice {sc['timeslice_us']:g} us" if sc.get("timeslice_us") else "") + "\n")
    w(f"{'vcpu':>4} {'cpu':>4} {'ops':>14} {'ops/s':>14} {'maps':>12} {'hash%':>6} {'tlb miss':>10} "
      f"{'lock cont':>10} {'run s':>7} {'wait s':>7} {'switch':>6} {'starved':>7}\n")
    rows = res["per_vcpu"]
    shown = rows if len(rows) <= 32 else rows[:8] + rows[-8:]
    for d in shown:
        hr = 100.0 * d["hash_hits"] / d["maps"] if d["maps"] else 0.0
        if shown is not rows and d is rows[-8]:
            w(f"  ... {len(rows) - 16} more vCPUs (all in --json)\n")
        w(f"{d['vcpu']:>4} {d['core']:>4} {d['ops']:>14,} {d['ops_per_s']:>14,.0f} {d['maps']:>12,} {hr:>6.1f} "
          f"{d['tlb_misses']:>10,} {d['lock_contended']:>10,} {d['run_s']:>7.2f} {d['wait_s']:>7.2f} "
          f"{d['switches']:>6} {d['starved_s'] if d['starved_s'] is not None else '-':>7}\n")
    f = res["fairness"]
    spread = f"{f['run_spread']:.2f}" if f["run_spread"] is not None else "-"
    w(f"fairness: run time per vCPU {f['run_s_min']:.3f}..{f['run_s_max']:.3f} s (spread {spread} of the median), "
      f"longest wait for a CPU {f['max_wait_s']:.3f} s, longest without progress {f['starved_max_s']} s\n")
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
    lock = res.get("lock")
    if lock:
        w(f"lock {lock['kind']}: {describe_lock(lock)}\n")
    irq = res.get("irq")
    if irq:
        w(f"interrupts at {irq['rate']:g}/s per vCPU: {irq['taken']:,} taken ({irq['inside']:,} inside a map or "
          f"unmap), {irq['deferred']:,} deferred (arrived with interrupts disabled), {irq['maps']:,} nested maps\n")
    checks = ", ".join(f"{k}={v}" for k, v in res["checks"].items())
    w(f"checks: {checks}\n")
    if res["failure"]:
        w(f"failure: {res['failure']['message']}\n")
        if res["failure"].get("live"):
            w(f"  live mappings: {describe_live(res['failure']['live'])}\n")
    if res["interrupted"]:
        w(f"interrupted by {res['interrupted']}: results are partial\n")
    if res["verdict"] != "SUCCESS":
        w(f"replay: {replay_command(res['config'])}\n")
    w(f"verdict: {res['verdict']}\n")


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


def print_compare(res: dict, out=sys.stdout) -> None:
    w = out.write
    h = res["host"]
    width = max([12] + [len(r["variant"]) + 1 for r in res["rows"]])
    w(f"\nPerformance drop against {res.get('baseline', 'the baseline')} ({res['workload']} workload; host "
      f"{h['cpu_model']}, {h['physical_cores']} cores; median of {res['repeat']} repetitions +/- median absolute "
      f"deviation)\n\n")
    w(f"{'perf drop':{width}} {'single-core (1 vCPU)':>24} {'multi-core (' + str(res['vcpus_multi']) + ' vCPUs)':>26}"
      f" {'cycles/map extra':>18}\n")
    for row in res["rows"]:
        cells = [f"{row[s + '_drop_pct']:+.2f}% +/- {row[s + '_spread_pct']:.2f}" if row[s + "_drops_pct"] else "-"
                 for s in ("single", "multi")]
        extra = row.get("extra_cycles_per_map")
        extra = f"{extra:+,.0f} +/- {row['extra_cycles_per_map_spread']:,.0f}" if extra is not None else "-"
        w(f"{row['variant']:{width}} {cells[0]:>24} {cells[1]:>26} {extra:>18}\n")
    w(f"(cycles/map extra: cycles per map over {res.get('baseline', 'the baseline')} on 1 vCPU, median of the "
      "repetitions paired by seed)\n\n")
    for row in res["rows"]:
        for scope in ("single", "multi"):
            if not row[scope + "_drops_pct"]:
                continue          # an interrupted compare: no repetition of this cell finished
            verdict = "larger than" if row[f"{scope}_significant"] else "within"
            w(f"{row['variant']} {scope}-core: drop {row[scope + '_drop_pct']:+.2f}% is {verdict} its spread "
              f"({row[scope + '_spread_pct']:.2f}%)\n")
    for scope in ("single", "multi"):
        for line in ranking(res["rows"], scope):
            w(line + "\n")


def ranking(rows: list[dict], scope: str) -> list[str]:
    """Each design against the next best one on ``scope``: the gap and whether the spreads separate them."""
    ranked = sorted((r for r in rows if r[f"{scope}_drops_pct"]), key=lambda r: r[f"{scope}_drop_pct"])
    out = []
    for better, worse in zip(ranked, ranked[1:]):
        gap = worse[f"{scope}_drop_pct"] - better[f"{scope}_drop_pct"]
        margin = worse[f"{scope}_spread_pct"] + better[f"{scope}_spread_pct"]
        out.append(f"{scope}-core: {worse['variant']} drops {gap:.2f} points more than {better['variant']}; spreads "
                   f"add to {margin:.2f}: " + ("the difference is larger than the spreads" if gap > margin
                                                else "not separated by more than the spreads"))
    return out


def print_scale(res: dict, out=sys.stdout) -> None:
    w = out.write
    width = max([12] + [len(r["variant"]) for r in res["rows"]])
    w(f"{'variant':{width}} {'vcpus':>5} {'sched':>10} {'ops/s':>14} {'linear':>14} {'efficiency':>10} "
      f"{'p99 cycles':>10} {'starved s':>9} {'handoff cyc':>11} {'fairness':>8}\n")
    for r in res["rows"]:
        p99 = r["p99_cycles"] if r["p99_cycles"] is not None else "-"
        handoff = f"{r['lock_handoff_cycles']:,.0f}" if r["lock_handoff_cycles"] is not None else "-"
        fair = f"{r['lock_fairness']:.3f}" if r["lock_fairness"] is not None else "-"
        w(f"{r['variant']:{width}} {r['vcpus']:>5} {r['sched']:>10} {r['ops_per_s']:>14,.0f} "
          f"{r['linear']:>14,.0f} {r['efficiency']:>10.3f} {p99:>10} {r['starved_max_s']:>9.2f} "
          f"{handoff:>11} {fair:>8}\n")
    print_models({r["sched"] for r in res["rows"]}, out)


def print_timers(res: dict, out=sys.stdout) -> None:
    w = out.write
    w(f"{'variant':12} {'sched':>10} {'timers set':>12} {'-ETIME':>10} {'rate':>8} {'worst streak':>12} "
      f"{'panics':>7} {'mean path us':>12}\n")
    for r in res["rows"]:
        path = f"{r['mean_path_us']:.2f}" if r["mean_path_us"] is not None else "-"
        w(f"{r['variant']:12} {r['sched']:>10} {r['timer_sets']:>12,} {r['etime']:>10,} "
          f"{100 * r['etime_rate']:>7.3f}% {r['worst_streak']:>12} {r['panics']:>7} {path:>12}\n")
    for r in res["rows"]:
        w(f"{r['variant']} ({r['sched']} scheduling): "
          f"{'PANIC: a FreeBSD 10 guest would crash' if r['panics'] else 'no panic'} "
          f"(worst streak {r['worst_streak']} of {res['panic_streak']})\n")
    print_models({r["sched"] for r in res["rows"]}, out)


def print_models(models, out=sys.stdout) -> None:
    """Say what each scheduling model in a table means: the figures depend on it."""
    from .config import SCHED_MODELS

    for m in ("hypervisor", "host"):
        if m in models:
            out.write(f"  {m}: {SCHED_MODELS[m]}\n")




COSTS = ("cost_flush_one", "cost_flush_all", "cost_walk", "cost_refill")


def print_compare_sweep(res: dict, option: str, out=sys.stdout) -> None:
    """compare --sweep: the table once per value, with the costs it ran under, then the verdict lines."""
    for t in res["sweep"]["tables"]:
        costs = ", ".join(f"{k.replace('_', '-')} {t['config'][k]}" for k in COSTS)
        out.write(f"\n=== {option}={t['sweep']['value']} ({costs})\n")
        print_compare(dict(res, rows=t["rows"]), out)
    out.write("\n")
    for line in res["sweep"]["verdict"]:
        out.write(f"verdict: {line}\n")


def variants_table() -> list[dict]:
    """Every variant and control: what ``testbed variants --json`` prints."""
    from . import variants

    out = []
    for v in variants.VARIANTS.values():
        d = {"name": v.name, "kind": "control" if v.control else "real", "description": v.description}
        if v.control:
            d.update(caught_by=list(v.catches), options=v.cli_options)
        else:
            d.update(default_entries=v.module.DEFAULT_ENTRIES, locks=list(v.locks), baseline=v.baseline)
        out.append(d)
    return out


def print_variants(out=sys.stdout, as_json: bool = False) -> None:
    from . import variants

    if as_json:
        import json

        out.write(json.dumps(variants_table(), indent=2) + "\n")
        return
    for v in variants.VARIANTS.values():
        m = v.module
        if v.control:
            extra = f"caught by: {', '.join(v.catches)}" + (f"; needs {' '.join(v.cli_options)}" if v.options else "")
        else:
            extra = f"entries {m.DEFAULT_ENTRIES}" + (f", --lock {'|'.join(v.locks)}" if v.locks else "") + (
                ", the baseline" if v.baseline else "")
        out.write(f"{v.name:20} {v.description} [{extra}]\n")
    out.write("\nwith more vCPUs than CPUs (--oversubscribe), --sched picks how they share the CPUs:\n")
    print_models({"hypervisor", "host"}, out)


def print_workloads(out=sys.stdout) -> None:
    from .config import WORKLOADS

    for name, (_, desc) in WORKLOADS.items():
        out.write(f"{name:10} {desc}\n")


def print_cleanup(out=sys.stdout) -> None:
    """testbed cleanup: remove the segments of dead runs, and say what was removed and what was kept."""
    from .shared import list_segments, remove_stale

    removed = remove_stale()
    live = [n for n in list_segments() if n not in removed]
    for line in ([f"removed stale segment /dev/shm/{n}" for n in removed]
                 + [f"kept /dev/shm/{n}: its owner is still running" for n in live]):
        out.write(line + "\n")
    if not removed and not live:
        out.write("no testbed segments\n")
