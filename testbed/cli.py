"""The ``testbed`` command line.

Bad input gets one line on stderr naming the problem and the fix, exit status
2, and nothing started. A run exits 0 on SUCCESS, 1 on FAILURE, 128 + signal
when interrupted (its partial results are still written).
"""

from __future__ import annotations

import argparse
import sys
import time

T_LAUNCH = time.perf_counter()

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (argparse prints the usage block)
        sys.stderr.write(f"{self.prog}: error: {message}; see '{self.prog} --help'\n")
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


def _vcpus(text: str):
    return text if text == "all" else _int(text)


def add_run_options(ap: argparse.ArgumentParser) -> None:
    from . import tlb

    ap.add_argument("--variant", default="directmap", help="mapcache design (see 'testbed variants')")
    ap.add_argument("--vcpus", type=_vcpus, default="all", help="vCPU processes, or 'all' physical cores (default)")
    ap.add_argument("--duration", type=_float, default=3.0, help="measured seconds (default 3)")
    ap.add_argument("--warmup", type=_float, default=1.0, help="warm-up seconds, reported but not measured (default 1)")
    ap.add_argument("--seed", type=_int, default=None, help="seed for every random choice (default: from the clock)")
    ap.add_argument("--cpus", default=None, help="host CPUs to use, e.g. 0,2-5 (default: all allowed)")
    ap.add_argument("--oversubscribe", action="store_true", help="allow more vCPUs than CPUs (they share CPUs)")
    ap.add_argument("--workload", default="uniform", help="operation mix (see 'testbed workloads')")
    ap.add_argument("--frames", type=_int, default=4096, help="machine frames in the arena (default 4096)")
    ap.add_argument("--working-set", type=_int, default=None, help="MFNs drawn from (default: all frames)")
    ap.add_argument("--hot-set", type=_int, default=8, help="hot workload: size of the hot set (default 8)")
    ap.add_argument("--entries", type=_int, default=None, help="MAPCACHE_VCPU_ENTRIES (default 16 locked, 32 lockless)")
    ap.add_argument("--hash", dest="hash_entries", type=_int, default=8, help="MAPHASH_ENTRIES (default 8)")
    ap.add_argument("--levels", type=_int, default=4, help="PAGING_LEVELS (default 4)")
    ap.add_argument("--nest", type=_int, default=None, help="ptwalk: most mappings held at once (default levels**2)")
    ap.add_argument("--unchecked", action="store_true", help="run a lockless geometry too small for a nested walk")
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


def config_from(args):
    from .config import RunConfig
    from .errors import UsageError
    from .topology import allowed_cpus, host_topology

    vcpus = args.vcpus
    if vcpus == "all":
        topo = host_topology()
        vcpus = topo.physical_in(allowed_cpus(topo, args.cpus))
    seed = args.seed if args.seed is not None else int(time.time_ns() % 1_000_000_007)
    costs = (0, 0, 0) if args.no_cost else (args.cost_flush_one, args.cost_flush_all, args.cost_walk)
    if args.seed is not None and args.seed < 0:
        raise UsageError(f"--seed {args.seed}: must be 0 or more")
    return RunConfig(
        variant=args.variant, vcpus=vcpus, duration=args.duration, warmup=args.warmup, seed=seed,
        cpus=args.cpus, oversubscribe=args.oversubscribe, workload=args.workload, frames=args.frames,
        working_set=args.working_set, hot_set=args.hot_set, entries=args.entries,
        hash_entries=args.hash_entries, levels=args.levels, nest=args.nest, unchecked=args.unchecked,
        tlb_entries=args.tlb_entries, tlb_ways=args.tlb_ways, cost_flush_one=costs[0],
        cost_flush_all=costs[1], cost_walk=costs[2], guest_work=args.guest_work, burst=args.burst,
        slack_us=args.slack_us, panic_streak=args.panic_streak, lat_every=args.lat_every,
        long_hold=args.long_hold, chunk_ms=args.chunk_ms,
    )


def checked_config(args):
    """The validated config, with its vCPU placement checked too: nothing has started yet."""
    from .config import validate
    from .topology import allowed_cpus, host_topology, place

    cfg = validate(config_from(args))
    topo = host_topology()
    place(topo, allowed_cpus(topo, cfg.cpus), cfg.vcpus, cfg.oversubscribe)
    return cfg


def check_writable(path: str) -> None:
    import os

    from .errors import UsageError

    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise UsageError(f"{path}: folder {folder} does not exist; create it or write elsewhere")
    if not os.access(folder, os.W_OK):
        raise UsageError(f"{path}: folder {folder} is not writable; write elsewhere")


def _print_sample(sample, cfg) -> None:
    d = sample.as_dict()
    tag = " (warm-up)" if sample.warmup else ""
    print(f"  t={d['t']:6.2f}s  ops total={d['total']:>12,}  min={d['min']:>11,}  max={d['max']:>11,}{tag}",
          flush=True)


def print_result(res: dict, out=sys.stdout) -> None:
    t = res["totals"]
    w = out.write
    w(f"variant {res['variant']}  vcpus {res['vcpus']}  workload {res['workload']}  seed {res['seed']}\n")
    w(f"start-up {res['startup'].get('total_s', 0):.2f} s (compile {res['startup'].get('compile_s', 0):.2f} s)  "
      f"measured {t['measured_s']:.2f} s\n")
    w(f"{'vcpu':>4} {'cpu':>4} {'ops':>14} {'ops/s':>14} {'maps':>12} {'hash%':>6} {'tlb miss':>10} "
      f"{'lock cont':>10} {'invcsw':>7}\n")
    for d in res["per_vcpu"]:
        hr = 100.0 * d["hash_hits"] / d["maps"] if d["maps"] else 0.0
        w(f"{d['vcpu']:>4} {d['core']:>4} {d['ops']:>14,} {d['ops_per_s']:>14,.0f} {d['maps']:>12,} {hr:>6.1f} "
          f"{d['tlb_misses']:>10,} {d['lock_contended']:>10,} {d['involuntary_ctx_switches']:>7}\n")
    w(f"total ops {t['ops']:,}  ops/s {t['ops_per_s']:,.0f}  ns/op per vCPU "
      f"{(1e9 * res['vcpus'] / t['ops_per_s']) if t['ops_per_s'] else float('nan'):.1f}\n")
    lat = res["latency"]
    if lat["samples"]:
        w(f"map latency (cycles, 1 in {lat['sampled_every_maps']} maps): p50<={lat['p50']} p90<={lat['p90']} "
          f"p99<={lat['p99']} p99.9<={lat['p99_9']} max={lat['max']}\n")
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
    from . import harness, results

    cfg = checked_config(args)
    if args.json:
        check_writable(args.json)
    print(f"testbed run: variant {cfg.variant}, {cfg.vcpus} vCPUs, seed {cfg.seed}", flush=True)
    res = harness.run(cfg, on_sample=None if args.quiet else _print_sample, t_launch=T_LAUNCH)
    print_result(res)
    if args.json:
        results.write_json(res, args.json)
        print(f"results written to {args.json}")
    if res["interrupted"]:
        return 128 + (15 if res["interrupted"] == "SIGTERM" else 2)
    return EXIT_OK if res["verdict"] == "SUCCESS" else EXIT_FAILURE


def cmd_variants(args) -> int:
    from . import variants

    for v in variants.VARIANTS.values():
        print(f"{v.name:18} {v.description}")
    return EXIT_OK


def cmd_workloads(args) -> int:
    from .config import WORKLOADS

    for name, (_, desc) in WORKLOADS.items():
        print(f"{name:10} {desc}")
    return EXIT_OK


def cmd_cleanup(args) -> int:
    from shared import list_segments, remove_stale

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
    run.add_argument("--json", default=None, help="write the result to this JSON file")
    run.add_argument("--quiet", action="store_true", help="no per-second lines")
    run.set_defaults(func=cmd_run)
    sub.add_parser("variants", help="list the mapcache variants").set_defaults(func=cmd_variants)
    sub.add_parser("workloads", help="list the workloads").set_defaults(func=cmd_workloads)
    sub.add_parser("cleanup", help="remove shared-memory segments left by dead runs").set_defaults(func=cmd_cleanup)
    return ap


def main(argv=None) -> int:
    from .errors import UsageError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UsageError as e:
        sys.stderr.write(f"testbed: error: {e}\n")
        return EXIT_USAGE
    except KeyboardInterrupt:
        sys.stderr.write("testbed: interrupted\n")
        return 130


if __name__ == "__main__":
    sys.exit(main())
