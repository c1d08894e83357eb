"""The ``testbed`` command line: parsing and dispatch.

Bad input gets one line on stderr naming the problem and the fix, exit status
2, and nothing started. A run exits 0 on SUCCESS, 1 on FAILURE, 128 + signal
when interrupted (its partial results are still written). The run options are
declared once, on ``config.RunConfig``; what the commands print is in
``textreport``, the stress loop in ``stress``, the experiments in ``experiments``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time

from .errors import ResultsError, UsageError, signal_exit
from .options import (_counts, _float, _int, _vcpus as _vcpus_arg, add_run_options, check_writable, checked_config,  # noqa: F401
                      config_from, one_line, sweep_arg)

T_LAUNCH = time.perf_counter()

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (argparse prints the usage block)
        sys.stderr.write(f"{self.prog}: error: {one_line(message)}; see '{self.prog} --help'\n")
        sys.exit(EXIT_USAGE)


def cmd_run(args) -> int:
    from . import harness, results, stats
    from . import variants as registry
    from .config import validate
    from .textreport import print_result, print_sample

    cfg = checked_config(args)
    _check_outputs(args)
    if args.repeat < 1:
        raise UsageError(f"--repeat {args.repeat}: must be at least 1")
    print(f"testbed run: variant {registry.get(cfg.variant).module.label(cfg)}{f' (lock {cfg.lock})' if cfg.lock else ''}, {cfg.vcpus} vCPUs, "
          f"workload {cfg.workload}, seed {cfg.seed}" + (f", {args.repeat} repetitions (seeds {cfg.seed}.."
                                                          f"{cfg.seed + args.repeat - 1})" if args.repeat > 1 else ""),
          flush=True)
    from . import hostinfo

    print("\n".join(hostinfo.header_lines(hostinfo.host()["facts"])), flush=True)
    runs = []
    for i in range(args.repeat):
        c = cfg if i == 0 else validate(dataclasses.replace(cfg, seed=cfg.seed + i))   # the seed changes no check
        res = harness.run(c, on_sample=None if args.quiet else print_sample, t_launch=T_LAUNCH if i == 0 else None)
        runs.append(res)
        print_result(res)
        if i == 0:
            _print_placement(res)
        if res["interrupted"] or res["verdict"] != "SUCCESS":
            break
    out = runs[0] if len(runs) == 1 else results.repeated(runs)
    if len(runs) > 1:
        rates = [r["totals"]["ops_per_s"] for r in runs]
        print(f"median ops/s {stats.median(rates):,.0f}  spread +/-{stats.spread(rates):,.0f} over {len(runs)} runs; "
              f"verdict: {out['verdict']}")
    write_outputs(args, out, csv=lambda path: results.write_run_csv(runs, path))
    if runs[-1]["interrupted"]:
        return signal_exit(runs[-1]["interrupted"])
    return EXIT_OK if out["verdict"] == "SUCCESS" else EXIT_FAILURE


def _print_placement(res: dict) -> None:
    """Where the vCPUs ran and where their memory was (read back, testbed/numa.py)."""
    from .numa import describe

    rows = res.get("vcpu_placement") or []
    nodes = sorted({r["node"] for r in rows if r["node"] is not None})
    print(f"placement {res['config'].get('placement')}: " + ", ".join(
        f"vCPU {r['vcpu']} on CPU {r['cpu']} (core {r['core']}, node {r['node']})" for r in rows[:8])
        + (f", ... ({len(rows)} vCPUs on nodes {','.join(map(str, nodes))})" if len(rows) > 8 else ""))
    print(describe(res.get("memory_placement")))


def _check_outputs(args) -> None:
    for option in ("json", "csv", "plot"):
        if getattr(args, option, None):
            check_writable(getattr(args, option), f"--{option}")


def _experiment_base(args):
    """The unresolved config (variant-dependent defaults stay open); the experiment's plan step validates
    every run it will make (``experiments.plan``)."""
    cfg = config_from(args)
    _check_outputs(args)
    return cfg


def write_outputs(args, res: dict, csv=None, plot=None) -> None:
    """The files a command was asked for: --json always means ``res``; --csv and --plot the given writers."""
    from . import results

    res.setdefault("command", reproducing_command(args))
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
    for f in res.get("failures") or ():
        msg = f["failure"]["message"] if f["failure"] else f"checks {f['checks']}"
        print(f"FAILURE: {f['variant']} on {f['vcpus']} vCPUs, seed {f['seed']}: {msg}")
    return EXIT_FAILURE if res.get("failures") else EXIT_OK


def _variants(args, default) -> list[str]:
    from . import variants as registry

    return registry.names(args.variants) if args.variants else list(default)


def cmd_compare(args) -> int:
    from . import experiments, textreport
    from . import variants as registry

    cfg = _experiment_base(args)
    names = _variants(args, registry.DESIGNS)
    print(f"testbed compare: variants {','.join(names)} against {registry.BASELINE}, workload {cfg.workload}, "
          f"1 and {cfg.vcpus} active vCPUs in a {experiments.compare_columns(cfg, cfg.vcpus)['multi']['domain_vcpus']}"
          f"-vCPU domain, {args.repeat} repetitions of {cfg.duration:g} s (+{cfg.warmup:g} s warm-up), "
          f"seed {cfg.seed}", flush=True)
    if args.sweep is None:
        res = experiments.compare(cfg, variants=names, vcpus_multi=cfg.vcpus, repeat=args.repeat, locks=args.locks)
        textreport.print_compare(res)
    else:
        print(f"sweeping {args.sweep[0]} over {', '.join(map(str, args.sweep[1]))}", flush=True)
        res = experiments.compare_sweep(cfg, *args.sweep, variants=names, vcpus_multi=cfg.vcpus, repeat=args.repeat,
                                        locks=args.locks)
        textreport.print_compare_sweep(res, args.sweep[0])
    return _finish(res, args)
def cmd_scale(args) -> int:
    from . import experiments, plots, results, textreport
    from . import variants as registry

    variants = _variants(args, [v.name for v in registry.REAL])
    cfg = _experiment_base(args)
    counts = args.vcpu_list or experiments.default_counts(cfg.vcpus)
    print(f"testbed scale: variants {','.join(label for label, _ in experiments.series(variants, args.locks))}, "
          f"vCPUs {','.join(map(str, counts))}, workload {cfg.workload}, seed {cfg.seed}", flush=True)
    res = experiments.scale(cfg, variants=variants, vcpu_counts=counts, repeat=args.repeat, locks=args.locks)
    textreport.print_scale(res)
    return _finish(res, args, csv=lambda path: results.write_scale_csv(res, path),
                   plot=lambda path: plots.scale_plot(res, path))


def cmd_timers(args) -> int:
    from . import experiments, textreport

    cfg = _experiment_base(args)
    print(f"testbed timers: {cfg.vcpus} vCPUs{' (oversubscribed)' if cfg.oversubscribe else ''}, slack "
          f"{cfg.slack_us:g} us, burst {cfg.burst}, panic after {cfg.panic_streak} consecutive -ETIME, "
          f"{cfg.duration:g} s, seed {cfg.seed}", flush=True)
    from .config import SSHOT_FUTURE

    print(f"modelled: FreeBSD 10.4's Xen timer (sys/dev/xen/timer/timer.c, xentimer_et_start), VCPU_SSHOTTMR_future "
          f"{cfg.sshot_future}: {SSHOT_FUTURE.get(cfg.sshot_future, '?')}", flush=True)
    res = experiments.timers(cfg, locks=args.locks)
    textreport.print_timers(res)
    return _finish(res, args)


def cmd_stress(args) -> int:
    from . import results, stress
    from . import variants as registry
    from .experiments import plan, series
    from .topology import allowed_cpus, host_topology

    todo = series(_variants(args, registry.DESIGNS), args.locks)
    for name, val in (("--shuffle", args.shuffle), ("--stutter", args.stutter), ("--check-every", args.check_every)):
        if val < 0:
            raise UsageError(f"{name} {val}: must be 0 (off) or a positive number of seconds")
    base = _experiment_base(args)
    cfgs = plan(dataclasses.replace(base, **fields) for _, fields in todo)
    stress.check_shuffle(cfgs[0], args.shuffle)
    sp = stress.StressPlan(shuffle_s=args.shuffle, stutter_s=args.stutter, check_s=args.check_every,
                           inject=args.inject, on_stall=args.on_stall)
    topo = host_topology()
    runs = stress.run_all([(label, c) for (label, _), c in zip(todo, cfgs)], base, sp, allowed_cpus(topo, base.cpus),
                          args.quiet)
    write_outputs(args, results.envelope("stress", base, {"variants": [label for label, _ in todo], "runs": runs,
                                                          "verdicts": {r["label"]: r["verdict"] for r in runs}}))
    if runs and runs[-1]["interrupted"]:
        return signal_exit(runs[-1]["interrupted"])
    return EXIT_OK if all(r["verdict"] == "SUCCESS" for r in runs) else EXIT_FAILURE


def cmd_diff(args) -> int:
    from . import hostinfo, results

    a, b = results.read_json(args.a), results.read_json(args.b)
    refused, flagged = hostinfo.compare_facts(a.get("host"), b.get("host"))
    for line in flagged:
        print(f"note: {line} differs: figures may move with it")
    problems = results.incomparable(a, b) + refused
    if problems and not args.force:
        raise UsageError(f"{args.a} and {args.b} differ in {'; '.join(problems)}; pass --force to compare anyway")
    print("\n".join(results.diff_lines(a, b)))
    return EXIT_OK


ARGV: list[str] = []        # this command's own arguments (main), for the result's "command"


def reproducing_command(args) -> dict:
    """The exact command that reproduces a result: its arguments, with the seed it drew made explicit."""
    import os

    argv = list(ARGV)
    seed = getattr(args, "seed", None)
    if seed is not None and not any(a == "--seed" or a.startswith("--seed=") for a in argv):
        argv += ["--seed", str(seed)]
    env = {k: os.environ[k] for k in ("TESTBED_FSROOT",) if os.environ.get(k)}
    return {"argv": ["testbed", *argv], "cwd": os.getcwd(), **({"env": env} if env else {})}


def cmd_placement(args) -> int:
    """Where each vCPU would run, on this host or on the TESTBED_FSROOT tree's; nothing is started."""
    import json

    from . import hostinfo
    from .numa import check_home, default_home
    from .topology import (allowed_cpus, check_placement, format_cpu_list, host_topology, place,
                           placement_rows)

    check_placement(args.placement, args.cpus)
    topo = host_topology()
    check_home(topo, args.numa_home)
    allowed = allowed_cpus(topo, args.cpus, ordered=args.placement == "given")
    vcpus = topo.physical_in(allowed) if args.vcpus == "all" else args.vcpus
    if vcpus < 1:
        raise UsageError(f"--vcpus {vcpus}: need at least 1 vCPU")
    rows = placement_rows(topo, place(topo, allowed, vcpus, args.oversubscribe, args.placement))
    home = args.numa_home if args.numa_home is not None else default_home(topo, [r["cpu"] for r in rows])
    if args.json:
        print(json.dumps({"vcpus": rows, "placement": args.placement, "numa_home": home,
                          "topology": topo.summary(), "facts": hostinfo.facts()}, indent=2))
        return EXIT_OK
    s = topo.summary()
    print(f"topology ({topo.root}): {s['packages']} package(s), NUMA nodes {','.join(map(str, topo.nodes))}, "
          f"{s['physical_cores']} cores, {s['logical_cpus']} CPUs online ({s['threads_per_core']} per core), "
          f"offline {s['offline'] or 'none'}; allowed CPUs {s['allowed']}"
          + (f" ({', '.join(topo.restricted_by)})" if topo.restricted_by else "")
          + f", memory nodes {s['allowed_mems']}")
    print(f"placement {args.placement}: {vcpus} vCPUs on CPUs {format_cpu_list(r['cpu'] for r in rows)}; "
          f"domain's shared lines on node {home}")
    for r in rows:
        print(f"  vCPU {r['vcpu']:>3}: CPU {r['cpu']:>4}  core {r['core']:>4}  package {r['package']:>3}  "
              f"node {r['node']}")
    return EXIT_OK


RERUNNABLE = ("run", "compare", "scale", "timers", "stress")


def _fresh_path(path: str) -> str:
    import os

    stem, ext = os.path.splitext(path)
    for i in range(1, 1000):
        cand = f"{stem}.rerun{'' if i == 1 else i}{ext}"
        if not os.path.exists(cand):
            return cand
    raise UsageError(f"{path}: 999 reruns already beside it; pass --json to name the new file")


def rerun_argv(argv: list[str], out: str) -> list[str]:
    """A recorded command's arguments with its output files moved: --json to ``out``, --csv and
    --plot beside their old names (``_fresh_path``), so that a rerun overwrites nothing."""
    new_argv, i = [], 0
    while i < len(argv):
        a = argv[i]
        if a in ("--json", "--csv", "--plot") and i + 1 < len(argv):
            new_argv += [a, out if a == "--json" else _fresh_path(argv[i + 1])]
            i += 2
            continue
        new_argv.append(a)
        i += 1
    if "--json" not in new_argv:
        new_argv += ["--json", out]
    return new_argv


def cmd_rerun(args) -> int:
    """Run a result's command again into a new file; say what differs in host facts and figures."""
    import os

    from . import hostinfo, results

    old = results.read_json(args.result)
    cmd = old.get("command") or {}
    argv = list(cmd.get("argv") or [])[1:]
    if not argv or argv[0] not in RERUNNABLE:
        raise UsageError(f"{args.result}: holds no command to rerun (results before this testbed recorded one "
                         "cannot be rerun); run its command by hand")
    out = args.json or _fresh_path(args.result)
    if os.path.abspath(out) == os.path.abspath(args.result):
        raise UsageError(f"--json {out}: that is the result being rerun; name another file")
    new_argv = rerun_argv(argv, out)
    print(f"testbed rerun: {' '.join(['testbed', *new_argv])}", flush=True)
    global ARGV
    saved, ARGV = ARGV, new_argv
    try:
        sub = build_parser().parse_args(new_argv)
        code = sub.func(sub)
    finally:
        ARGV = saved
    if not os.path.exists(out):
        return code
    new = results.read_json(out)
    refused, flagged = hostinfo.compare_facts(old.get("host"), new.get("host"))
    for line in refused + flagged:
        print(f"rerun: {line} differs from the original's")
    if not refused and not flagged:
        print("rerun: host facts as in the original")
    print("\n".join(f"rerun: {line}" for line in results.diff_lines(old, new)))
    return code


def cmd_listing(args) -> int:
    """testbed variants | workloads | cleanup: what the textreport module prints."""
    from . import textreport

    {"variants": lambda: textreport.print_variants(as_json=args.json), "workloads": textreport.print_workloads,
     "cleanup": textreport.print_cleanup}[args.command]()
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
    add_run_options(cmp_, duration=2.0, workload="guest", vcpus=None, variant=False,
                    shown={"domain_vcpus": "32, the seed's guest, or the multi-core column's --vcpus if more; "
                                           "the single-core column is 1 active vCPU in it"})
    cmp_.add_argument("--vcpus", dest="vcpus_multi", type=_int, default=None,
                      help="vCPUs of the multi-core column (default: all physical cores)")
    cmp_.add_argument("--variants", default=None, help="comma-separated variants (default: every real design)")
    cmp_.add_argument("--repeat", type=_int, default=3, help="repetitions per cell (default 3)")
    cmp_.add_argument("--json", default=None, help="write the table and every run to this JSON file")
    cmp_.add_argument("--sweep", default=None, type=sweep_arg, metavar="OPTION=v1,v2,...",
                      help="the table once per value of one cost option (cost-flush-one, cost-flush-all, cost-walk, "
                           "cost-refill), and where the ordering of the designs flips")
    cmp_.set_defaults(func=cmd_compare)

    sc = sub.add_parser("scale", help="sweep vCPU counts: throughput, linear, efficiency, p99 latency")
    add_run_options(sc, duration=2.0, vcpus=None, variant=False, shown={"domain_vcpus": "the largest --vcpus"})
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

    pl = sub.add_parser("placement", help="where each vCPU would run (this host, or TESTBED_FSROOT's); starts nothing")
    pl.add_argument("--vcpus", type=_vcpus_arg, default="all", help="vCPUs, or 'all' allowed physical cores (default)")
    pl.add_argument("--placement", default="compact", help="compact, scatter or given (default compact)")
    pl.add_argument("--cpus", default=None, help="CPUs to use, e.g. 0,2-5; with --placement given, in this order")
    pl.add_argument("--numa-home", dest="numa_home", type=_int, default=None,
                    help="node of the domain's shared lines (default: vCPU 0's)")
    pl.add_argument("--oversubscribe", action="store_true", help="allow more vCPUs than CPUs")
    pl.add_argument("--json", action="store_true", help='as JSON: {"vcpus": [{"vcpu", "cpu", "core", "package", '
                    '"node"}, ...]}, the topology and the host facts')
    pl.set_defaults(func=cmd_placement)

    rr = sub.add_parser("rerun", help="run a result's command again into a new file; what differs in host and figures")
    rr.add_argument("result", help="a result JSON written by run, compare, scale, timers or stress")
    rr.add_argument("--json", default=None, help="the new result's file (default: RESULT.rerun.json, never RESULT)")
    rr.set_defaults(func=cmd_rerun)

    df = sub.add_parser("diff", help="compare two result files (refused across hosts or configs)")
    df.add_argument("a")
    df.add_argument("b")
    df.add_argument("--force", action="store_true", help="compare even if host or config differ")
    df.set_defaults(func=cmd_diff)

    sw = sub.add_parser("sweep", help="run a grid of runs from a TOML plan, here or on Slurm; resumable")
    from . import report, sweep

    sweep.add_arguments(sw)
    sw.set_defaults(func=sweep.main)

    rp = sub.add_parser("report", help="merge a sweep's results: one CSV, plots per host and workload")
    report.add_arguments(rp)
    rp.set_defaults(func=report.main)

    va = sub.add_parser("variants", help="list the mapcache variants and negative controls")
    va.add_argument("--json", action="store_true", help="as JSON: name, kind, description, and for a control the "
                    "checks that must catch it and the run options it needs")
    va.set_defaults(func=cmd_listing)
    sub.add_parser("workloads", help="list the workloads").set_defaults(func=cmd_listing)
    sub.add_parser("cleanup", help="remove shared-memory segments left by dead runs").set_defaults(func=cmd_listing)
    return ap


def main(argv=None) -> int:
    from .harness import Interrupted

    global ARGV
    ARGV = list(sys.argv[1:] if argv is None else argv)
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
