"""The ``testbed`` command line.

Bad input gets one line on stderr naming the problem and the fix, exit status
2, and nothing started. A run exits 0 on SUCCESS, 1 on FAILURE, 128 + signal
when interrupted (its partial results are still written).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time

from .errors import ResultsError, UsageError, signal_exit

T_LAUNCH = time.perf_counter()

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


def one_line(text: str) -> str:
    """User text may hold line breaks or control characters: keep an error message on one line."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (argparse prints the usage block)
        sys.stderr.write(f"{self.prog}: error: {one_line(message)}; see '{self.prog} --help'\n")
        sys.exit(EXIT_USAGE)


def _int(text: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None


def _float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def _counts(text: str) -> list[int]:
    try:
        counts = sorted({int(x) for x in text.split(",")})
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of vCPU counts, e.g. 1,2,4") from None
    if counts[0] < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: every vCPU count must be at least 1")
    return counts


def _vcpus(text: str):
    return text if text == "all" else _int(text)


def _names(text: str) -> list[str]:
    names = [x.strip() for x in text.split(",") if x.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"{text!r} names nothing; give a comma-separated list, e.g. ticket,mcs")
    return names


def add_run_options(ap: argparse.ArgumentParser, duration: float = 3.0, workload: str = "uniform",
                    vcpus: str | None = "all", variant: bool = True) -> None:
    from . import tlb
    from . import variants as registry

    locks = "; ".join(f"{v.name}: {', '.join(v.locks)}" for v in registry.REAL if v.locks)
    if variant:
        ap.add_argument("--variant", default=registry.BASELINE, help="mapcache design (see 'testbed variants')")
        ap.add_argument("--lock", default=None, help=f"lock of a variant that has one ({locks}; default the first)")
    else:
        ap.add_argument("--lock", dest="locks", type=_names, default=None,
                        help=f"run each variant that has a lock once per lock named, e.g. ticket,mcs,tas ({locks})")
    if vcpus is not None:
        ap.add_argument("--vcpus", type=_vcpus, default=vcpus, help="vCPU processes, or 'all' physical cores (default)")
    ap.add_argument("--duration", type=_float, default=duration, help=f"measured seconds (default {duration:g})")
    ap.add_argument("--warmup", type=_float, default=1.0, help="warm-up seconds, reported but not measured (default 1)")
    ap.add_argument("--seed", type=_int, default=None, help="seed for every random choice (default: from the clock)")
    ap.add_argument("--cpus", default=None, help="host CPUs to use, e.g. 0,2-5 (default: all allowed)")
    ap.add_argument("--oversubscribe", action="store_true", help="allow more vCPUs than CPUs (they share CPUs)")
    ap.add_argument("--workload", default=workload, help=f"operation mix (default {workload}; see 'testbed workloads')")
    ap.add_argument("--frames", type=_int, default=4096, help="machine frames in the arena (default 4096)")
    ap.add_argument("--working-set", type=_int, default=None, help="MFNs drawn from (default: all frames)")
    ap.add_argument("--hot-set", type=_int, default=8, help="hot workload: size of the hot set (default 8)")
    ap.add_argument("--entries", type=_int, default=None, help="MAPCACHE_VCPU_ENTRIES (default: the variant's, see 'testbed variants')")
    ap.add_argument("--hash", dest="hash_entries", type=_int, default=8, help="MAPHASH_ENTRIES (default 8)")
    ap.add_argument("--levels", type=_int, default=4, help="PAGING_LEVELS (default 4)")
    ap.add_argument("--nest", type=_int, default=None, help="ptwalk: most mappings held at once (default levels**2)")
    ap.add_argument("--unchecked", action="store_true", help="run a geometry the variant rejects (e.g. too small for a nested walk)")
    ap.add_argument("--tlb-entries", type=_int, default=64, help="simulated TLB entries (default 64)")
    ap.add_argument("--tlb-ways", type=_int, default=4, help="simulated TLB associativity (default 4)")
    ap.add_argument("--cost-flush-one", type=_int, default=tlb.COST_FLUSH_ONE, help="cycles per invlpg (0: off)")
    ap.add_argument("--cost-flush-all", type=_int, default=tlb.COST_FLUSH_ALL, help="cycles per full flush (0: off)")
    ap.add_argument("--cost-walk", type=_int, default=tlb.COST_WALK, help="cycles per TLB miss walk (0: off)")
    ap.add_argument("--no-cost", action="store_true", help="turn the TLB cost model off")
    ap.add_argument("--guest-work", type=_int, default=2000, help="guest workload: work units between maps")
    ap.add_argument("--burst", type=_int, default=4, help="guest/timers: map operations per hypercall (default 4)")
    ap.add_argument("--slack-us", type=_float, default=50.0, help="timers: deadline slack in microseconds (default 50)")
    ap.add_argument("--panic-streak", type=_int, default=60, help="timers: consecutive -ETIME that panic (default 60)")
    ap.add_argument("--lat-every", type=_int, default=6, help="sample map latency every 2**k maps (default 6)")
    ap.add_argument("--long-hold", type=_int, default=0, help="cycles to spin inside the critical section")
    ap.add_argument("--chunk-ms", type=_float, default=5.0, help="kernel chunk between stop checks (default 5 ms)")
    ap.add_argument("--sched", default=None, metavar="{hypervisor,host}",
                    help="with more vCPUs than CPUs: 'hypervisor' (default) schedules vCPUs as a hypervisor does, "
                         "switching only between operations; 'host' lets the host preempt them anywhere "
                         "(lock-holder preemption, as with guest spinlocks). No effect with vCPUs <= CPUs")
    ap.add_argument("--timeslice-us", type=_float, default=None,
                    help="--sched hypervisor: time slice (default 1000, Xen credit2's rate limit)")


def config_from(args):
    from . import variants as registry
    from .config import RunConfig
    from .topology import allowed_cpus, host_topology

    vcpus = getattr(args, "vcpus", "all")
    if getattr(args, "vcpus_multi", None) is not None:
        vcpus = args.vcpus_multi
    elif getattr(args, "vcpu_list", None):
        vcpus = max(args.vcpu_list)
    if vcpus == "all":
        topo = host_topology()
        vcpus = topo.physical_in(allowed_cpus(topo, args.cpus))
    seed = args.seed if args.seed is not None else int(time.time_ns() % 1_000_000_007)
    costs = (0, 0, 0) if args.no_cost else (args.cost_flush_one, args.cost_flush_all, args.cost_walk)
    if args.seed is not None and args.seed < 0:
        raise UsageError(f"--seed {args.seed}: must be 0 or more")
    return RunConfig(
        variant=getattr(args, "variant", None) or registry.BASELINE, lock=getattr(args, "lock", None), vcpus=vcpus, duration=args.duration, warmup=args.warmup, seed=seed,
        cpus=args.cpus, oversubscribe=args.oversubscribe, workload=args.workload, frames=args.frames,
        working_set=args.working_set, hot_set=args.hot_set, entries=args.entries,
        hash_entries=args.hash_entries, levels=args.levels, nest=args.nest, unchecked=args.unchecked,
        tlb_entries=args.tlb_entries, tlb_ways=args.tlb_ways, cost_flush_one=costs[0],
        cost_flush_all=costs[1], cost_walk=costs[2], guest_work=args.guest_work, burst=args.burst,
        slack_us=args.slack_us, panic_streak=args.panic_streak, lat_every=args.lat_every,
        long_hold=args.long_hold, chunk_ms=args.chunk_ms, sched=args.sched,
        **({"timeslice_us": args.timeslice_us} if args.timeslice_us is not None else {}),
    )


def checked_config(args):
    """The validated config, with its vCPU placement checked too: nothing has started yet."""
    from .config import validate
    from .topology import allowed_cpus, host_topology, place

    cfg = validate(config_from(args))
    args.seed = cfg.seed          # a seed drawn from the clock stays the same for the whole command
    topo = host_topology()
    place(topo, allowed_cpus(topo, cfg.cpus), cfg.vcpus, cfg.oversubscribe)
    return cfg


def check_writable(path: str, option: str) -> None:
    import os

    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise UsageError(f"{option} {path}: folder {folder} does not exist; create it or write elsewhere")
    if not os.access(folder, os.W_OK):
        raise UsageError(f"{option} {path}: folder {folder} is not writable; write elsewhere")


def _print_sample(sample, cfg) -> None:
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
    checks = ", ".join(f"{k}={v}" for k, v in res["checks"].items())
    w(f"checks: {checks}\n")
    if res["failure"]:
        w(f"failure: {res['failure']['message']}\n")
        if res["failure"].get("live"):
            w(f"  live mappings: {describe_live(res['failure']['live'])}\n")
    if res["interrupted"]:
        w(f"interrupted by {res['interrupted']}: results are partial\n")
    if res["verdict"] != "SUCCESS":
        w(f"replay: {replay_command(res)}\n")
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


def replay_command(res: dict) -> str:
    c = res["config"]
    parts = ["testbed run", f"--variant {c['variant']}", f"--vcpus {c['vcpus']}", f"--duration {c['duration']}",
             f"--seed {c['seed']}", f"--workload {c['workload']}"]
    if c["entries"] is not None:
        parts.append(f"--entries {c['entries']}")
    if c.get("lock"):
        parts.append(f"--lock {c['lock']}")
    if c["cpus"]:
        parts.append(f"--cpus {c['cpus']}")
    if c["oversubscribe"]:
        parts.append("--oversubscribe")
    if c["unchecked"]:
        parts.append("--unchecked")
    for key in ("frames", "working_set", "hash_entries", "levels", "nest", "long_hold"):
        flag = {"hash_entries": "hash"}.get(key, key).replace("_", "-")
        parts.append(f"--{flag} {c[key]}")
    return " ".join(parts)


def cmd_run(args) -> int:
    from . import harness, results, stats

    cfg = checked_config(args)
    for option, path in (("--json", args.json), ("--csv", args.csv)):
        if path:
            check_writable(path, option)
    if args.repeat < 1:
        raise UsageError(f"--repeat {args.repeat}: must be at least 1")
    print(f"testbed run: variant {cfg.variant}{f' (lock {cfg.lock})' if cfg.lock else ''}, {cfg.vcpus} vCPUs, workload {cfg.workload}, seed {cfg.seed}"
          + (f", {args.repeat} repetitions (seeds {cfg.seed}..{cfg.seed + args.repeat - 1})" if args.repeat > 1 else ""),
          flush=True)
    runs = []
    for i in range(args.repeat):
        c = dataclasses.replace(cfg, seed=cfg.seed + i)
        res = harness.run(c, on_sample=None if args.quiet else _print_sample, t_launch=T_LAUNCH if i == 0 else None)
        runs.append(res)
        print_result(res)
        if res["interrupted"] or res["verdict"] != "SUCCESS":
            break
    out = runs[0] if len(runs) == 1 else results.repeated(runs)
    if len(runs) > 1:
        rates = [r["totals"]["ops_per_s"] for r in runs]
        print(f"median ops/s {stats.median(rates):,.0f}  spread +/-{stats.spread(rates):,.0f} over {len(runs)} runs; "
              f"verdict: {out['verdict']}")
    write_outputs(args, out, csv=lambda path: results.write_run_csv(runs, path))
    last = runs[-1]
    if last["interrupted"]:
        return signal_exit(last["interrupted"])
    return EXIT_OK if out["verdict"] == "SUCCESS" else EXIT_FAILURE


def _experiment_base(args):
    """The unresolved config (variant-dependent defaults stay open), checked for every variant it will run."""
    checked_config(args)
    cfg = config_from(args)
    for option in ("json", "csv", "plot"):
        path = getattr(args, option, None)
        if path:
            check_writable(path, f"--{option}")
    return cfg


def write_outputs(args, res: dict, csv=None, plot=None) -> None:
    """The files a command was asked for: --json always means ``res``; --csv and --plot the given writers."""
    from . import results

    for option, what, write in (("json", "results", lambda path: results.write_json(res, path)),
                                ("csv", "CSV", csv), ("plot", "plot", plot)):
        path = getattr(args, option, None)
        if path and write is not None:
            write(path)
            print(f"{what} written to {path}")


def _finish(res: dict, args, csv=None, plot=None) -> int:
    """Write the outputs (an interrupted experiment's too: its finished rows, marked partial); the exit status."""
    if res.get("interrupted"):
        print(f"interrupted by {res['interrupted']}: results are partial ({len(res['runs'])} runs finished)")
        if not res["rows"]:
            plot = None           # nothing to draw
    write_outputs(args, res, csv=csv, plot=plot)
    if res.get("interrupted"):
        return signal_exit(res["interrupted"])
    if res.get("failures"):
        for f in res["failures"]:
            msg = f["failure"]["message"] if f["failure"] else f"checks {f['checks']}"
            print(f"FAILURE: {f['variant']} on {f['vcpus']} vCPUs, seed {f['seed']}: {msg}")
        return EXIT_FAILURE
    return EXIT_OK


def cmd_compare(args) -> int:
    from . import experiments

    cfg = _experiment_base(args)
    multi = cfg.vcpus
    from . import variants as registry

    names = registry.names(args.variants) if args.variants else list(registry.DESIGNS)
    print(f"testbed compare: variants {','.join(names)} against {registry.BASELINE}, workload {cfg.workload}, "
          f"1 and {multi} vCPUs, {args.repeat} repetitions of {cfg.duration:g} s (+{cfg.warmup:g} s warm-up), "
          f"seed {cfg.seed}", flush=True)
    res = experiments.compare(cfg, variants=names, vcpus_multi=multi, repeat=args.repeat, locks=args.locks)
    print_compare(res)
    return _finish(res, args)


def print_compare(res: dict, out=sys.stdout) -> None:
    w = out.write
    h = res["host"]
    width = max([12] + [len(r["variant"]) + 1 for r in res["rows"]])
    w(f"\nPerformance drop against {res.get('baseline', 'the baseline')} ({res['workload']} workload; host "
      f"{h['cpu_model']}, {h['physical_cores']} cores; median of {res['repeat']} repetitions +/- median absolute "
      f"deviation)\n\n")
    w(f"{'perf drop':{width}} {'single-core (1 vCPU)':>24} {'multi-core (' + str(res['vcpus_multi']) + ' vCPUs)':>26}\n")
    for row in res["rows"]:
        cells = [f"{row[s + '_drop_pct']:+.2f}% +/- {row[s + '_spread_pct']:.2f}" if row[s + "_drops_pct"] else "-"
                 for s in ("single", "multi")]
        w(f"{row['variant']:{width}} {cells[0]:>24} {cells[1]:>26}\n")
    w("\n")
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


def cmd_scale(args) -> int:
    from . import experiments, plots, results

    from . import variants as registry

    variants = registry.names(args.variants) if args.variants else [v.name for v in registry.REAL]
    todo = experiments.series(variants, args.locks)
    cfg = _experiment_base(args)
    counts = args.vcpu_list or default_counts(cfg.vcpus)
    print(f"testbed scale: variants {','.join(label for label, _ in todo)}, vCPUs {','.join(map(str, counts))}, "
          f"workload {cfg.workload}, seed {cfg.seed}", flush=True)
    res = experiments.scale(cfg, variants=variants, vcpu_counts=counts, repeat=args.repeat, locks=args.locks)
    width = max([12] + [len(label) for label, _ in todo])
    print(f"{'variant':{width}} {'vcpus':>5} {'sched':>10} {'ops/s':>14} {'linear':>14} {'efficiency':>10} "
          f"{'p99 cycles':>10} {'starved s':>9} {'handoff cyc':>11} {'fairness':>8}")
    for r in res["rows"]:
        p99 = r["p99_cycles"] if r["p99_cycles"] is not None else "-"
        handoff = f"{r['lock_handoff_cycles']:,.0f}" if r["lock_handoff_cycles"] is not None else "-"
        fair = f"{r['lock_fairness']:.3f}" if r["lock_fairness"] is not None else "-"
        print(f"{r['variant']:{width}} {r['vcpus']:>5} {r['sched']:>10} {r['ops_per_s']:>14,.0f} "
              f"{r['linear']:>14,.0f} {r['efficiency']:>10.3f} {p99:>10} {r['starved_max_s']:>9.2f} "
              f"{handoff:>11} {fair:>8}")
    print_models({r["sched"] for r in res["rows"]})
    return _finish(res, args, csv=lambda path: results.write_scale_csv(res, path),
                   plot=lambda path: plots.scale_plot(res, path))


def print_models(models, out=sys.stdout) -> None:
    """Say what each scheduling model in a table means: the figures depend on it."""
    from .config import SCHED_MODELS

    for m in ("hypervisor", "host"):
        if m in models:
            out.write(f"  {m}: {SCHED_MODELS[m]}\n")


def default_counts(cores: int) -> list[int]:
    """1, 2, 4, ... up to the number of cores, and the number of cores itself."""
    counts, n = [], 1
    while n < cores:
        counts.append(n)
        n *= 2
    return counts + [cores]


def cmd_timers(args) -> int:
    from . import experiments

    cfg = _experiment_base(args)
    print(f"testbed timers: {cfg.vcpus} vCPUs{' (oversubscribed)' if cfg.oversubscribe else ''}, slack "
          f"{cfg.slack_us:g} us, burst {cfg.burst}, panic after {cfg.panic_streak} consecutive -ETIME, "
          f"{cfg.duration:g} s, seed {cfg.seed}", flush=True)
    res = experiments.timers(cfg, locks=args.locks)
    print(f"{'variant':12} {'sched':>10} {'timers set':>12} {'-ETIME':>10} {'rate':>8} {'worst streak':>12} "
          f"{'panics':>7} {'mean path us':>12}")
    for r in res["rows"]:
        path = f"{r['mean_path_us']:.2f}" if r["mean_path_us"] is not None else "-"
        print(f"{r['variant']:12} {r['sched']:>10} {r['timer_sets']:>12,} {r['etime']:>10,} "
              f"{100 * r['etime_rate']:>7.3f}% {r['worst_streak']:>12} {r['panics']:>7} {path:>12}")
    for r in res["rows"]:
        print(f"{r['variant']} ({r['sched']} scheduling): "
              f"{'PANIC: a FreeBSD 10 guest would crash' if r['panics'] else 'no panic'} "
              f"(worst streak {r['worst_streak']} of {cfg.panic_streak})")
    print_models({r["sched"] for r in res["rows"]})
    return _finish(res, args)


def cmd_stress(args) -> int:
    from . import harness, results
    from . import variants as registry
    from .stress import StressPlan, Stressor
    from .topology import allowed_cpus, host_topology

    from .experiments import series

    names = registry.names(args.variants) if args.variants is not None else list(registry.DESIGNS)
    todo = series(names, args.locks)
    for name, val in (("--shuffle", args.shuffle), ("--stutter", args.stutter), ("--check-every", args.check_every)):
        if val < 0:
            raise UsageError(f"{name} {val}: must be 0 (off) or a positive number of seconds")
    args.variant = names[0]
    base = _experiment_base(args)
    from .config import validate

    for _, fields in todo:
        validate(dataclasses.replace(base, **fields))
    plan = StressPlan(shuffle_s=args.shuffle, stutter_s=args.stutter, check_s=args.check_every,
                      inject=args.inject, on_stall=args.on_stall)
    echo = (f"testbed stress: variants={','.join(label for label, _ in todo)} vcpus={base.vcpus} duration={base.duration:g} "
            f"warmup={base.warmup:g} seed={base.seed} workload={base.workload} shuffle={plan.shuffle_s:g} "
            f"stutter={plan.stutter_s:g} long_hold={base.long_hold} check_every={plan.check_s:g} "
            f"inject={plan.inject or 'none'} on_stall={plan.on_stall} oversubscribe={base.oversubscribe}")
    print(echo, flush=True)
    topo = host_topology()
    cpus = allowed_cpus(topo, base.cpus)
    runs, lines = [], []
    for name, fields in todo:
        cfg = dataclasses.replace(base, **fields)
        print(f"--- {name}", flush=True)
        stressor = Stressor(plan, cpus, cfg.seed)
        res = harness.run(cfg, on_sample=None if args.quiet else _print_stress_sample, hooks=stressor)
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
                         + f"; seed {cfg.seed}; replay: {stress_replay(args, cfg.variant, cfg)}")
        else:
            lines.append(f"{name}: SUCCESS")
        if res["interrupted"]:
            break
    print(echo.replace("testbed stress:", "testbed stress (end):"))
    for line in lines:
        print(line)
    write_outputs(args, results.envelope("stress", base, {"variants": [label for label, _ in todo], "runs": runs,
                                                          "verdicts": {r["label"]: r["verdict"] for r in runs}}))
    if runs and runs[-1]["interrupted"]:
        return signal_exit(runs[-1]["interrupted"])
    return EXIT_OK if all(r["verdict"] == "SUCCESS" for r in runs) else EXIT_FAILURE


def _print_stress_sample(sample, cfg) -> None:
    _print_sample(sample, cfg)


def stress_replay(args, variant: str, cfg) -> str:
    parts = ["testbed stress", f"--variants {variant}", f"--vcpus {cfg.vcpus}", f"--duration {cfg.duration:g}",
             f"--seed {cfg.seed}", f"--workload {cfg.workload}"]
    for flag, val in (("--shuffle", args.shuffle), ("--stutter", args.stutter), ("--long-hold", cfg.long_hold)):
        if val:
            parts.append(f"{flag} {val:g}")
    if args.inject:
        parts.append(f"--inject {args.inject} --on-stall {args.on_stall}")
    if cfg.oversubscribe:
        parts.append("--oversubscribe")
    if cfg.cpus:
        parts.append(f"--cpus {cfg.cpus}")
    if cfg.entries is not None:
        parts.append(f"--entries {cfg.entries}")
    if cfg.lock is not None:
        parts.append(f"--lock {cfg.lock}")
    return " ".join(parts)


def cmd_diff(args) -> int:
    from . import results

    a, b = results.read_json(args.a), results.read_json(args.b)
    problems = results.incomparable(a, b)
    if problems and not args.force:
        raise UsageError(f"{args.a} and {args.b} differ in {'; '.join(problems)}; pass --force to compare anyway")
    for line in results.diff_lines(a, b):
        print(line)
    return EXIT_OK


def cmd_sweep(args) -> int:
    from . import sweep

    return sweep.main(args)


def cmd_report(args) -> int:
    from . import report

    return report.main(args)


def cmd_variants(args) -> int:
    from . import variants

    for v in variants.VARIANTS.values():
        m = v.module
        if v.control:
            extra = f"caught by: {', '.join(v.catches)}"
        else:
            extra = f"entries {m.DEFAULT_ENTRIES}" + (f", --lock {'|'.join(v.locks)}" if v.locks else "") + (
                ", the baseline" if v.baseline else "")
        print(f"{v.name:18} {v.description} [{extra}]")
    print("\nwith more vCPUs than CPUs (--oversubscribe), --sched picks how they share the CPUs:")
    print_models({"hypervisor", "host"})
    return EXIT_OK


def cmd_workloads(args) -> int:
    from .config import WORKLOADS

    for name, (_, desc) in WORKLOADS.items():
        print(f"{name:10} {desc}")
    return EXIT_OK


def cmd_cleanup(args) -> int:
    from testbed.shared import list_segments, remove_stale

    removed = remove_stale()
    for name in removed:
        print(f"removed stale segment /dev/shm/{name}")
    live = [n for n in list_segments() if n not in removed]
    for name in live:
        print(f"kept /dev/shm/{name}: its owner is still running")
    if not removed and not live:
        print("no testbed segments")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="testbed", description="Multiprocess concurrency testbed for hypervisor mapcache designs.")
    sub = ap.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="run one variant on N pinned vCPU processes")
    add_run_options(run)
    run.add_argument("--repeat", type=_int, default=1, help="repetitions, seeds seed..seed+R-1 (default 1)")
    run.add_argument("--json", default=None, help="write the result to this JSON file")
    run.add_argument("--csv", default=None, help="write one CSV row per repetition to this file")
    run.add_argument("--quiet", action="store_true", help="no per-second lines")
    run.set_defaults(func=cmd_run)

    cmp_ = sub.add_parser("compare", help="the seed's table: drop of every design against the baseline")
    add_run_options(cmp_, duration=2.0, workload="guest", vcpus=None, variant=False)
    cmp_.add_argument("--vcpus", dest="vcpus_multi", type=_int, default=None,
                      help="vCPUs of the multi-core column (default: all physical cores)")
    cmp_.add_argument("--variants", default=None, help="comma-separated variants (default: every real design)")
    cmp_.add_argument("--repeat", type=_int, default=3, help="repetitions per cell (default 3)")
    cmp_.add_argument("--json", default=None, help="write the table and every run to this JSON file")
    cmp_.set_defaults(func=cmd_compare)

    sc = sub.add_parser("scale", help="sweep vCPU counts: throughput, linear, efficiency, p99 latency")
    add_run_options(sc, duration=2.0, vcpus=None, variant=False)
    sc.add_argument("--variants", default=None, help="comma-separated variants (default: every real one)")
    sc.add_argument("--vcpus", dest="vcpu_list", type=_counts, default=None,
                    help="vCPU counts, e.g. 1,2,4 (default 1, 2, 4, ... physical cores)")
    sc.add_argument("--repeat", type=_int, default=1, help="repetitions per point (default 1)")
    sc.add_argument("--json", default=None, help="write the sweep to this JSON file")
    sc.add_argument("--csv", default=None, help="write variant,vcpus,ops_per_s,linear,efficiency,p99_cycles rows")
    sc.add_argument("--plot", default=None, help="write a PNG plot: throughput and p99 latency against vCPUs")
    sc.set_defaults(func=cmd_scale)

    tm = sub.add_parser("timers", help="the FreeBSD failure: -ETIME streaks and panics per variant")
    add_run_options(tm, duration=5.0, workload="timers", variant=False)
    tm.add_argument("--json", default=None, help="write the table and both runs to this JSON file")
    tm.set_defaults(func=cmd_timers)

    stp = sub.add_parser("stress", help="locktorture-style stress: shuffle, stutter, long holds, fault injection")
    add_run_options(stp, duration=10.0, variant=False)
    stp.set_defaults(warmup=0.0)
    stp.add_argument("--variants", default=None,
                     help="comma-separated variants, controls allowed (default: every real design)")
    stp.add_argument("--shuffle", type=_float, default=0.0, help="re-pin vCPUs to other CPUs every S seconds")
    stp.add_argument("--stutter", type=_float, default=0.0, help="all vCPUs pause S seconds every S seconds")
    stp.add_argument("--check-every", type=_float, default=1.0, help="quiescent invariant checks every S seconds")
    stp.add_argument("--inject", choices=("kill", "stop"), default=None, help="fault: SIGKILL or SIGSTOP one vCPU")
    stp.add_argument("--on-stall", choices=("kill", "resume"), default="kill", help="what to do with a stopped vCPU")
    stp.add_argument("--json", default=None, help="write every run to this JSON file")
    stp.add_argument("--quiet", action="store_true", help="no per-second lines")
    stp.set_defaults(func=cmd_stress)

    df = sub.add_parser("diff", help="compare two result files (refused across hosts or configs)")
    df.add_argument("a")
    df.add_argument("b")
    df.add_argument("--force", action="store_true", help="compare even if host or config differ")
    df.set_defaults(func=cmd_diff)

    sw = sub.add_parser("sweep", help="run a grid of runs from a TOML plan, here or on Slurm; resumable")
    from . import report, sweep

    sweep.add_arguments(sw)
    sw.set_defaults(func=cmd_sweep)

    rp = sub.add_parser("report", help="merge a sweep's results: one CSV, plots per host and workload")
    report.add_arguments(rp)
    rp.set_defaults(func=cmd_report)

    sub.add_parser("variants", help="list the mapcache variants").set_defaults(func=cmd_variants)
    sub.add_parser("workloads", help="list the workloads").set_defaults(func=cmd_workloads)
    sub.add_parser("cleanup", help="remove shared-memory segments left by dead runs").set_defaults(func=cmd_cleanup)
    return ap


def main(argv=None) -> int:
    from .harness import Interrupted

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (UsageError, ResultsError) as e:
        sys.stderr.write(f"testbed: error: {one_line(e)}\n")
        return EXIT_USAGE
    except (KeyboardInterrupt, Interrupted) as e:
        name = e.signame if isinstance(e, Interrupted) else "SIGINT"
        sys.stderr.write(f"testbed: interrupted by {name}\n")
        return signal_exit(name)


if __name__ == "__main__":
    sys.exit(main())
