"""The ``testbed`` command line: parsing and dispatch.

Bad input gets one line on stderr naming the problem and the fix, exit status
2, and nothing started (output paths included). A command exits 0 on SUCCESS, 1
on FAILURE, 3 when its run finished but an output could not be written (the
result is then in a fallback file whose name is printed), 128 + signal when
interrupted (its partial results are still written). Every command ends with
one ``verdict:`` line (``findings.closing``).

The run options are declared once, on ``config.RunConfig``; a command's own
options once, with ``_opt``; a command once, with ``_command`` (its summary,
description and example). What the commands print is in ``textreport``, the
stress loop in ``stress``, the experiments in ``experiments``, diffs in ``diff``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import textwrap
import time

from . import predict, report, sweep
from .errors import ResultsError, UsageError, did_you_mean, signal_exit
from .options import (_counts, _float, _int, _vcpus as _vcpus_arg, add_run_options, check_writable,
                      checked_config, config_from, duration_in, one_line, sweep_arg)

T_LAUNCH = time.perf_counter()

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_OUTPUT = 0, 1, 2, 3
GLOSSARY = "docs/results.md"


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (argparse prints the usage block)
        sys.stderr.write(f"{self.prog}: error: {one_line(message)}{self._suggestion(message)}; "
                         f"see '{self.prog} --help'\n")
        sys.exit(EXIT_USAGE)

    def _suggestion(self, message: str) -> str:
        """ "did you mean" for a misspelt option or command."""
        import re

        m = re.match(r"unrecognized arguments: (\S+)", message)
        if m:
            word = m.group(1).split("=")[0]
            parsers = [self] + [p for a in self._actions if isinstance(a, argparse._SubParsersAction)
                                for p in a.choices.values()]
            return did_you_mean(word, {o for p in parsers for a in p._actions for o in a.option_strings})
        m = re.match(r"argument \S+: invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if m:
            return did_you_mean(m.group(1), re.findall(r"'([^']*)'", m.group(2)))
        return ""


def _opt(p: argparse.ArgumentParser, flag: str, default, help: str, **kw) -> None:
    """A command's own option, declared once: its help says the default it is given here."""
    shown = "" if default in (None, False) or kw.get("action") == "store_true" else f" (default {default})"
    p.add_argument(flag, default=default, help=help + shown, **kw)


def cmd_run(args) -> int:
    from . import findings, harness, results, stats
    from . import variants as registry
    from .config import validate
    from .textreport import print_result, print_sample

    cfg = checked_config(args)
    _check_outputs(args)
    if args.repeat < 1:
        raise UsageError(f"--repeat {args.repeat}: must be at least 1")
    chosen = "" if args.variant else " (the baseline: no --variant given; 'testbed variants' lists the others)"
    print(f"testbed run: variant {registry.get(cfg.variant).module.label(cfg)}{f' (lock {cfg.lock})' if cfg.lock else ''}{chosen}, {cfg.vcpus} "
          f"vCPUs, workload {cfg.workload}, seed {cfg.seed}" + (f", {args.repeat} repetitions (seeds {cfg.seed}.."
                                                                f"{cfg.seed + args.repeat - 1})" if args.repeat > 1
                                                                else ""),
          flush=True)
    from . import hostinfo

    print("\n".join(hostinfo.header_lines(hostinfo.host()["facts"])), flush=True)
    runs = []
    for i in range(args.repeat):
        c = cfg if i == 0 else validate(dataclasses.replace(cfg, seed=cfg.seed + i))   # the seed changes no check
        res = harness.run(c, on_sample=None if args.quiet else print_sample, t_launch=T_LAUNCH if i == 0 else None)
        res["figures"] = findings.run_figures(res)
        runs.append(res)
        print_result(res, closing=False)
        if i == 0:
            _print_placement(res)
        if args.repeat > 1:
            print(f"repetition {i + 1} of {args.repeat} (seed {c.seed}): {res['verdict']}")
        if res["interrupted"] or res["verdict"] != "SUCCESS":
            break
    out = runs[0] if len(runs) == 1 else results.repeated(runs)
    figures = runs[0]["figures"]
    if len(runs) > 1:
        rates = [r["totals"]["ops_per_s"] for r in runs]
        ci = stats.bootstrap_mean_ci(rates)
        figures = (f"median {stats.median(rates):,.0f} ops/s, spread +/-{stats.spread(rates):,.0f} over {len(runs)} "
                   "runs" + (f", mean's {stats.method()} {ci[0]:,.0f}..{ci[1]:,.0f}" if ci else ""))
        out["figures"] = figures
    failed = write_outputs(args, out, csv=lambda path: results.write_run_csv(runs, path))
    interrupted = runs[-1]["interrupted"]
    print(findings.closing(sum(r["verdict"] != "SUCCESS" for r in runs), len(runs), figures, interrupted))
    if interrupted:
        return signal_exit(interrupted)
    if out["verdict"] != "SUCCESS":
        return EXIT_FAILURE
    return EXIT_OUTPUT if failed else EXIT_OK


OUTPUTS = ("json", "csv", "plot")


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
    """Every output path a command was given, checked before anything starts."""
    for option in OUTPUTS:
        if getattr(args, option, None):
            check_writable(getattr(args, option), f"--{option}")


def _experiment_base(args):
    """The unresolved config (variant-dependent defaults stay open); the experiment's plan step validates
    every run it will make (``experiments.plan``)."""
    cfg = config_from(args)
    _check_outputs(args)
    return cfg


def write_outputs(args, res: dict, csv=None, plot=None) -> list[str]:
    """The files a command was asked for: --json always means ``res``; --csv and --plot the given writers.

    A file that cannot be written after the run loses nothing: the whole result goes to a
    fallback JSON file, named on stdout and stderr. The options that failed (empty: all written).
    """
    from . import output, results

    failed = []
    res.setdefault("command", reproducing_command(args))
    for option, what, write in (("json", "results", lambda path: results.write_json(res, path)),
                                ("csv", "CSV", csv), ("plot", "plot", plot)):
        path = getattr(args, option, None)
        if path and write is not None:
            try:
                write(path)
            except OSError as e:
                failed.append(option)
                sys.stderr.write(f"testbed: error: --{option} {path}: could not be written after the run "
                                 f"({e.strerror or e})\n")
                continue
            print(f"{what} written to {path}")
    if failed:
        saved = output.save_fallback(res)
        where = f"the result is saved in {saved}" if saved else "no fallback file could be written either"
        sys.stderr.write(f"testbed: {where} (exit status {EXIT_OUTPUT}: output failed)\n")
        print(f"output failed for --{', --'.join(failed)}: {where}")
    return failed


def _finish(res: dict, args, csv=None, plot=None) -> int:
    """Write the outputs (an interrupted experiment's too: its finished rows, marked partial), print
    the closing verdict line; the exit status."""
    from . import findings

    if res.get("interrupted"):
        print(f"interrupted by {res['interrupted']}: results are partial ({len(res['runs'])} runs finished)")
        if not res["rows"]:
            plot = None           # nothing to draw
    for f in res.get("failures") or ():
        msg = f["failure"]["message"] if f["failure"] else f"checks {f['checks']}"
        print(f"FAILURE: {f['variant']} on {f['vcpus']} vCPUs, seed {f['seed']}: {msg}")
    failed = write_outputs(args, res, csv=csv, plot=plot)
    print(findings.closing(len(res.get("failures") or ()), len(res.get("runs") or ()), res.get("figures", "-"),
                           res.get("interrupted")))
    if res.get("interrupted"):
        return signal_exit(res["interrupted"])
    if res.get("failures"):
        return EXIT_FAILURE
    return EXIT_OUTPUT if failed else EXIT_OK


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
        res["verdict"] = "FAILURE" if res["failures"] else "SUCCESS"
        res["figures"] = "; ".join(line for line in res["sweep"]["verdict"] if line.startswith("multi")) or "-"
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
    from . import findings, results, stress
    from . import variants as registry
    from .experiments import plan, series
    from .topology import allowed_cpus, host_topology

    todo = series(_variants(args, registry.DESIGNS), args.locks)
    for name, val in (("--shuffle", args.shuffle), ("--stutter", args.stutter), ("--check-every", args.check_every)):
        if val < 0:
            raise UsageError(f"{name} {val:g}: must be 0 (off) or a positive time, e.g. 2s or 500ms")
    base = _experiment_base(args)
    cfgs = plan(dataclasses.replace(base, **fields) for _, fields in todo)
    stress.check_shuffle(cfgs[0], args.shuffle)
    sp = stress.StressPlan(shuffle_s=args.shuffle, stutter_s=args.stutter, check_s=args.check_every,
                           inject=args.inject, on_stall=args.on_stall)
    topo = host_topology()
    runs = stress.run_all([(label, c) for (label, _), c in zip(todo, cfgs)], base, sp, allowed_cpus(topo, base.cpus),
                          args.quiet)
    interrupted = runs[-1]["interrupted"] if runs else None
    failed_runs = sum(r["verdict"] != "SUCCESS" for r in runs)
    if args.inject:
        caught = [r for r in runs if stress.caught(r)]
        missed = [r["label"] for r in runs if not stress.caught(r)]
        figures = (f"the injected {args.inject} was caught in {len(caught)} of {len(runs)} runs, as it must be"
                   if not missed else f"the injected {args.inject} went unseen in {', '.join(missed)}")
        ok = not missed
        line = (f"verdict: {'SUCCESS' if ok else 'FAILURE'} (--inject {args.inject}: the checks failed where the fault "
                f"was injected, {failed_runs} of {len(runs)} runs, as expected)" if ok else
                f"verdict: FAILURE (--inject {args.inject}: a fault went unseen)") + f"; figures: {figures}"
    else:
        ok = not failed_runs
        figures = "; ".join(f"{r['label']} {r['totals']['ops_per_s']:,.0f} ops/s" for r in runs) or "no run finished"
        line = findings.closing(failed_runs, len(runs), figures, interrupted)
    res = results.envelope("stress", base, {"verdict": "SUCCESS" if ok else "FAILURE", "figures": figures,
                                            "variants": [label for label, _ in todo], "runs": runs,
                                            "verdicts": {r["label"]: r["verdict"] for r in runs}})
    failed = write_outputs(args, res)
    print(line)
    if interrupted:
        return signal_exit(interrupted)
    return EXIT_FAILURE if not ok else EXIT_OUTPUT if failed else EXIT_OK


def cmd_diff(args) -> int:
    from . import diff

    return diff.main(args)


def cmd_explain(args) -> int:
    from . import glossary

    return glossary.main(args)


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
    nodes = sorted({r["node"] for r in rows})
    print(f"verdict: SUCCESS (nothing started); figures: {vcpus} vCPUs on {len({r['cpu'] for r in rows})} CPUs, "
          f"{len({(r['package'], r['core']) for r in rows})} cores, node{'s' if len(nodes) > 1 else ''} {','.join(map(str, nodes))}")
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

    from . import hostinfo, output, results

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
    held: list[str] = []
    try:
        sub = build_parser().parse_args(new_argv)
        with output.hold_verdict() as held:
            code = sub.func(sub)
    except BaseException:
        if held:
            print("\n".join(held), flush=True)  # stopped: the verdict as the command printed it
        raise
    finally:
        ARGV = saved
    if os.path.exists(out):
        new = results.read_json(out)
        refused, flagged = hostinfo.compare_facts(old.get("host"), new.get("host"))
        for line in refused + flagged:
            print(f"rerun: {line} differs from the original's")
        if not refused and not flagged:
            print("rerun: host facts as in the original")
        print("\n".join(f"rerun: {line}" for line in results.diff_lines(old, new)))
    if held:
        print(held[-1], flush=True)            # the rerun's own verdict stays the last line
    return code


def cmd_listing(args) -> int:
    """testbed variants | workloads | cleanup: what the textreport module prints."""
    from . import textreport

    {"variants": lambda: textreport.print_variants(as_json=args.json), "workloads": textreport.print_workloads,
     "cleanup": textreport.print_cleanup}[args.command]()
    if not getattr(args, "json", False):
        print(textreport.listing_verdict(args.command))
    return EXIT_OK


def _command(sub, name: str, summary: str, example: str, func, description: str = "") -> argparse.ArgumentParser:
    """A subcommand, declared once: ``summary`` is its line in ``testbed --help`` and opens its own
    ``--help``, which ends with ``example``. New commands register here the same way."""
    text = summary[0].upper() + summary[1:] + "." + (f" {description}" if description else "")
    text += f" Every figure and column is defined in {GLOSSARY} and by 'testbed explain NAME'."
    p = sub.add_parser(name, help=summary, description=textwrap.fill(text, 79),
                       epilog=f"example:\n  {example}", formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--wide", action="store_true", help="do not fit the output to 100 columns: wider tables, "
                   "unwrapped lines")
    p.set_defaults(func=func)
    return p


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    ap = _Parser(prog="testbed", description=textwrap.fill(
                 "Multiprocess concurrency testbed for hypervisor mapcache designs. Exit status: 0 SUCCESS, "
                 f"1 FAILURE, 2 bad input, {EXIT_OUTPUT} output failed (the result is in a fallback file), 128+N "
                 f"stopped by signal N. Every figure and column: {GLOSSARY}, 'testbed explain NAME'.", 79),
                 epilog="example:\n  testbed compare", formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--version", action="version", version=f"testbed {__version__}")
    sub = ap.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = _command(sub, "run", "run one variant on N pinned vCPU processes",
                   "testbed run --variant locked --vcpus 2 --duration 2s --json run.json", cmd_run)
    add_run_options(run)
    _opt(run, "--repeat", 1, "repetitions, seeds seed..seed+R-1", type=_int)
    _opt(run, "--json", None, "write the result to this JSON file")
    _opt(run, "--csv", None, "write one CSV row per repetition to this file (columns: docs/results.md)")
    _opt(run, "--quiet", False, "no per-second lines", action="store_true")

    cmp_ = _command(sub, "compare", "the seed's table: drop of every design against the baseline",
                    "testbed compare --variants locked,lockless --repeat 5", cmd_compare,
                    "The drop is how much slower a design is than directmap, in percent of directmap's ops/s "
                    "(1 - design / directmap), paired by seed repetition by repetition; the table shows its mean "
                    "and a 95% bootstrap interval, and a difference is claimed only when the interval excludes "
                    "it being 0 (5 repetitions at least).")
    add_run_options(cmp_, vcpus=None, variant=False, duration=1.0, warmup=0.3, workload="guest",
                    shown={"domain_vcpus": "32, the seed's guest, or the multi-core column's --vcpus if more; "
                                           "the single-core column is 1 active vCPU in it"})
    _opt(cmp_, "--vcpus", None, "vCPUs of the multi-core column (default: all physical cores)", dest="vcpus_multi",
         type=_int)
    _opt(cmp_, "--variants", None, "comma-separated variants (default: every real design)")
    _opt(cmp_, "--repeat", 5, "repetitions per cell; fewer than 5 make no claim", type=_int)
    _opt(cmp_, "--json", None, "write the table and every run to this JSON file")
    _opt(cmp_, "--sweep", None, "the table once per value of one cost option (cost-flush-one, cost-flush-all, "
         "cost-walk, cost-refill), and where the ordering of the designs flips", type=sweep_arg,
         metavar="OPTION=v1,v2,...")

    sc = _command(sub, "scale", "sweep vCPU counts: throughput, linear, efficiency, p99 latency",
                  "testbed scale --variants locked,lockless --vcpus 1,2 --csv scale.csv --plot scale.png", cmd_scale)
    add_run_options(sc, vcpus=None, variant=False, duration=2.0, shown={"domain_vcpus": "the largest --vcpus"})
    _opt(sc, "--variants", None, "comma-separated variants (default: every real one)")
    _opt(sc, "--vcpus", None, "vCPU counts, e.g. 1,2,4 (default 1, 2, 4, ... physical cores)", dest="vcpu_list",
         type=_counts)
    _opt(sc, "--repeat", 1, "repetitions per point; 5 or more give intervals", type=_int)
    _opt(sc, "--json", None, "write the sweep to this JSON file")
    from .results import SCALE_CSV

    _opt(sc, "--csv", None, f"write a row per point, {len(SCALE_CSV)} columns ({', '.join(SCALE_CSV)}; "
         f"see {GLOSSARY})")
    _opt(sc, "--plot", None, "write a PNG plot: throughput and p99 latency against vCPUs")

    tm = _command(sub, "timers", "the FreeBSD failure: -ETIME streaks and panics per variant",
                  "testbed timers --vcpus 2 --duration 5s", cmd_timers)
    add_run_options(tm, variant=False, duration=5.0, workload="timers")
    _opt(tm, "--json", None, "write the table and every run (one per variant and scheduling model) to this JSON file")

    stp = _command(sub, "stress", "locktorture-style stress: shuffle, stutter, long holds, fault injection",
                   "testbed stress --variants locked --duration 10s --inject kill", cmd_stress,
                   "Under --inject the checks must catch the fault: the command succeeds when they do.")
    add_run_options(stp, variant=False, duration=10.0, warmup=0.0)
    _opt(stp, "--variants", None, "comma-separated variants, controls allowed (default: every real design)")
    seconds = duration_in("s")
    _opt(stp, "--shuffle", 0.0, "re-pin vCPUs to other CPUs every TIME (0: off)", type=seconds, metavar="TIME")
    _opt(stp, "--stutter", 0.0, "all vCPUs pause TIME every TIME (0: off)", type=seconds, metavar="TIME")
    _opt(stp, "--check-every", 1.0, "quiescent invariant checks every TIME", type=seconds, metavar="TIME")
    _opt(stp, "--inject", None, "fault: SIGKILL or SIGSTOP one vCPU", choices=("kill", "stop"))
    _opt(stp, "--on-stall", "kill", "what to do with a stopped vCPU", choices=("kill", "resume"))
    _opt(stp, "--json", None, "write every run to this JSON file")
    _opt(stp, "--quiet", False, "no per-second lines", action="store_true")

    pl = _command(sub, "placement", "where each vCPU would run (this host, or TESTBED_FSROOT's); starts nothing",
                  "testbed placement --vcpus 4 --placement scatter --json", cmd_placement)
    pl.add_argument("--vcpus", type=_vcpus_arg, default="all", help="vCPUs, or 'all' allowed physical cores (default)")
    pl.add_argument("--placement", default="compact", help="compact, scatter or given (default compact)")
    pl.add_argument("--cpus", default=None, help="CPUs to use, e.g. 0,2-5; with --placement given, in this order")
    pl.add_argument("--numa-home", dest="numa_home", type=_int, default=None,
                    help="node of the domain's shared lines (default: vCPU 0's)")
    pl.add_argument("--oversubscribe", action="store_true", help="allow more vCPUs than CPUs")
    pl.add_argument("--json", action="store_true", help='as JSON: {"vcpus": [{"vcpu", "cpu", "core", "package", '
                    '"node"}, ...]}, the topology and the host facts')
    pl.set_defaults(func=cmd_placement)

    rr = _command(sub, "rerun", "run a result's command again into a new file; what differs in host and figures",
                  "testbed rerun result.json", cmd_rerun)
    rr.add_argument("result", help="a result JSON written by run, compare, scale, timers or stress")
    rr.add_argument("--json", default=None, help="the new result's file (default: RESULT.rerun.json, never RESULT)")
    rr.set_defaults(func=cmd_rerun)


    df = _command(sub, "diff", "compare two results of one kind (run, compare, scale, timers, a sweep folder)",
                  "testbed diff before.json after.json --max-slowdown 5", cmd_diff,
                  "A row per (design, vCPUs): A's and B's figures and B/A; with 5 repetitions on both sides, "
                  "a 95% bootstrap interval of the slowdown. Refused across kinds, hosts or configs.")
    df.add_argument("a", help="the reference: a results file or a sweep's folder")
    df.add_argument("b", help="the one compared with it, of the same kind")
    _opt(df, "--force", False, "compare even if host or config differ", action="store_true")
    _opt(df, "--max-slowdown", None, "exit 1 when B is significantly slower than A by more than PCT percent on "
         "any row (the interval's lower end above PCT)", type=_float, metavar="PCT")

    sw = _command(sub, "sweep", "run a grid of runs from a TOML plan, here or on Slurm; resumable",
                  "testbed sweep examples/figures.toml --out results/ --dry-run", None)
    sweep.add_arguments(sw)
    sw.set_defaults(func=sweep.main)

    pr = _command(sub, "predict", "fit a contention model here, predict 1..N pCPUs, check every measured point",
                  "testbed predict --to 256", predict.main)
    predict.add_arguments(pr)

    rp = _command(sub, "report", "merge a sweep's results: one CSV, plots per host and workload",
                  "testbed report results/", None)
    report.add_arguments(rp)
    rp.set_defaults(func=report.main)

    ex = _command(sub, "explain", "define a column or figure of the output",
                  "testbed explain efficiency", cmd_explain)
    ex.add_argument("name", nargs="?", default=None, help="a column or key, e.g. drop, linear, 'starved s'; none: "
                    "list them all")

    va = _command(sub, "variants", "list the mapcache variants and negative controls", "testbed variants --json",
                  cmd_listing)
    _opt(va, "--json", False, "as JSON: name, kind, description, and for a control the checks that must catch "
         "it and the run options it needs", action="store_true")
    _command(sub, "workloads", "list the workloads", "testbed workloads", cmd_listing)
    _command(sub, "cleanup", "remove shared-memory segments left by dead runs", "testbed cleanup", cmd_listing)
    return ap


def main(argv=None) -> int:
    from . import output
    from .harness import Interrupted

    global ARGV
    ARGV = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    # JSON on stdout is never wrapped; everything else fits 100 columns on a terminal unless --wide
    wide = getattr(args, "wide", False)
    raw = wide or (args.command == "variants" and args.json)
    term = output.install(output.width_for(sys.stdout, raw), wide)
    try:
        return args.func(args)
    except (UsageError, ResultsError) as e:
        sys.stderr.write(f"testbed: error: {one_line(e)}\n")
        return EXIT_USAGE
    except (KeyboardInterrupt, Interrupted) as e:
        name = e.signame if isinstance(e, Interrupted) else "SIGINT"
        sys.stderr.write(f"testbed: interrupted by {name}\n")
        return signal_exit(name)
    finally:
        output.uninstall()
        if term.closed_pipe:
            sys.stdout = open(os.devnull, "w")     # the interpreter's last flush goes nowhere


if __name__ == "__main__":
    sys.exit(main())
