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
from .options import (_counts, _float, _int, add_run_options, check_writable, checked_config,  # noqa: F401
                      config_from, one_line, sweep_arg)

T_LAUNCH = time.perf_counter()

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (argparse prints the usage block)
        sys.stderr.write(f"{self.prog}: error: {one_line(message)}; see '{self.prog} --help'\n")
        sys.exit(EXIT_USAGE)


def cmd_run(args) -> int:
    from . import harness, results, stats
    from .config import validate
    from .textreport import print_result, print_sample

    cfg = checked_config(args)
    _check_outputs(args)
    if args.repeat < 1:
        raise UsageError(f"--repeat {args.repeat}: must be at least 1")
    print(f"testbed run: variant {cfg.variant}{f' (lock {cfg.lock})' if cfg.lock else ''}, {cfg.vcpus} vCPUs, "
          f"workload {cfg.workload}, seed {cfg.seed}" + (f", {args.repeat} repetitions (seeds {cfg.seed}.."
                                                          f"{cfg.seed + args.repeat - 1})" if args.repeat > 1 else ""),
          flush=True)
    runs = []
    for i in range(args.repeat):
        c = cfg if i == 0 else validate(dataclasses.replace(cfg, seed=cfg.seed + i))   # the seed changes no check
        res = harness.run(c, on_sample=None if args.quiet else print_sample, t_launch=T_LAUNCH if i == 0 else None)
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
    if runs[-1]["interrupted"]:
        return signal_exit(runs[-1]["interrupted"])
    return EXIT_OK if out["verdict"] == "SUCCESS" else EXIT_FAILURE


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
          f"1 and {cfg.vcpus} vCPUs, {args.repeat} repetitions of {cfg.duration:g} s (+{cfg.warmup:g} s warm-up), "
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
    from . import results

    a, b = results.read_json(args.a), results.read_json(args.b)
    problems = results.incomparable(a, b)
    if problems and not args.force:
        raise UsageError(f"{args.a} and {args.b} differ in {'; '.join(problems)}; pass --force to compare anyway")
    print("\n".join(results.diff_lines(a, b)))
    return EXIT_OK


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
    add_run_options(cmp_, duration=2.0, workload="guest", vcpus=None, variant=False)
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
    sw.set_defaults(func=sweep.main)

    pr = sub.add_parser("predict", help="fit a contention model here, predict 1..N pCPUs, check every measured point")
    from . import predict

    predict.add_arguments(pr)
    pr.set_defaults(func=predict.main)

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
