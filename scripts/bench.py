#!/usr/bin/env python3
"""Benchmark: cost per operation of each variant, and how the harness scales.

Prints, from real runs of the harness (pinned worker processes):

1. nanoseconds per operation on one vCPU for each variant, TLB cost model off,
   uniform workload: the median of --repeat runs, and its ratio to directmap
   (locked once per lock and layout of its domain words, ``--dom-layout``);
2. locked on 2 vCPUs contending for its lock, each lock in both layouts of its
   domain words: ops/s, the median of --repeat runs, layouts interleaved, and
   the median of the per-round ratios xen / padded;
3. directmap throughput on 1 vCPU and on all physical cores, and the scaling
   efficiency all-core / (N x one-vCPU), each the median of --repeat runs, for
   the memory-bound uniform workload and for the compute-bound guest workload
   (which shows what the harness itself allows).

All figures of one invocation come from the same machine in the same minute;
compare ratios, not absolute times, across invocations.

With ``--vs-xen xen:TREE[+PATCH],...`` it prints instead, for each Xen tree (and patches), its own
``domain_page.c`` built against the shim (``testbed/xen.py``) against the C port of the design it
has the shape of (the old design: ``locked``; the seed: ``lockless``), timed the same way.

With ``--vs-c`` it prints instead, for every design of the registry (locked
under each of its locks, in each layout) and frame count, the compiled
loop against the same loop in C (``testbed/csrc/testbed_op.c``, built with the
system compiler): ns per operation of both and their ratio, this process pinned
to one CPU, cost model off, uniform workload. A round times three calls of
each, alternating which goes first, and keeps each side's fastest (whatever
else runs on the host only ever adds time); the figures are medians over
--repeat rounds, the ratio the median of the rounds' ratios.

The ``yardstick`` section (in the default set, or alone with ``--only yardstick``)
builds the minimal C loop of the first release, ``shared/yardstick/testbed_op.c``
beside the checkout (or ``--yardstick PATH``, or ``$TESTBED_YARDSTICK``), as it is,
into a temporary directory, and prints it beside the compiled ``directmap`` loop at
256 and 4096 frames, both pinned to the same CPU, uniform workload, cost model off,
with their ratio: the floor our loop is measured against. That C loop does the map,
checked access and unmap with the same TLB, counters and latency sampling, without
what today's loop has grown since (nested walks, rechecks, interrupts, hypercalls).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from testbed import harness
from testbed.config import RunConfig
from testbed.topology import allowed_cpus, host_topology


def ops_per_s(**kw) -> float:
    res = harness.run(RunConfig(**kw))
    if res["verdict"] != "SUCCESS":
        sys.exit(f"bench: run {kw} ended {res['verdict']}: {res['checks']} {res['failure']}")
    return res["totals"]["ops_per_s"]


def kernel_ns(rows, frames: int, repeat: int, n: int = 2_000_000) -> dict:
    """ns per operation of the compiled loop alone, in this process (no harness, no pinning),
    rows (``with_locks``) interleaved; the median of ``repeat`` calls of ``n`` operations each."""
    import time

    from testbed import loops

    setups = {}
    for name, lock, layout in rows:
        args = _loop_args(name, frames, lock, layout)
        loops.run_ops(1000, 0, *args)
        setups[label(name, lock, layout)] = args
    times = {name: [] for name in setups}
    for _ in range(repeat):
        for name, args in setups.items():
            t0 = time.perf_counter()
            loops.run_ops(n, 0, *args)
            times[name].append((time.perf_counter() - t0) / n * 1e9)
    return {name: statistics.median(t) for name, t in times.items()}


def frames_given(argv) -> bool:
    return any(a == "--frames" or a.startswith("--frames=") for a in argv)


def _loop_args(name: str, frames: int, lock: str | None = None, layout: str | None = None):
    """Fresh arrays for one vCPU of ``name``, cost model off, no time budget (kernel_args order)."""
    from testbed import abi, config

    cfg = config.validate(RunConfig(variant=name, vcpus=1, frames=frames, cost_flush_one=0, cost_flush_all=0,
                                    cost_walk=0, cost_refill=0, lock=lock, dom_layout=layout))
    p = config.params(cfg)
    p[abi.P_CHUNK_CYCLES] = 1 << 62
    return harness.private_state(cfg, p)[2]


PAIRS = 3     # --vs-c: calls of each loop per round
SECTIONS = ("kernel", "yardstick", "contended", "harness", "scaling")


def with_locks(names):
    """(variant, lock, layout) for each name: a variant with locks once per lock, and with layouts of
    its domain words once per layout (None for the others)."""
    from testbed import variants as registry

    return [(name, lock, layout) for name in names for lock in (registry.VARIANTS[name].locks or (None,))
            for layout in (registry.VARIANTS[name].dom_layouts or (None,))]


def label(name: str, lock: str | None, layout: str | None) -> str:
    """A row's name: ``locked/ticket/xen``, or the variant alone."""
    return "/".join(x for x in (name, lock, layout) if x)


def contended(repeat: int, common: dict) -> None:
    """locked on 2 vCPUs through the harness, each lock in both layouts, interleaved per round."""
    from testbed import variants as registry

    v = registry.VARIANTS["locked"]
    print(f"\n# locked, 2 pinned vCPUs contending for the lock, cost model off, median of {repeat} runs of "
          f"{common['duration']} s (layouts interleaved); ratio: median of the rounds' xen / padded")
    for lock in v.locks:
        runs = {layout: [] for layout in v.dom_layouts}
        for s in range(1, repeat + 1):
            for layout in (v.dom_layouts if s % 2 else v.dom_layouts[::-1]):
                runs[layout].append(ops_per_s(variant="locked", vcpus=2, seed=s, lock=lock, dom_layout=layout,
                                              **common))
        ratios = [x / p for x, p in zip(runs["xen"], runs["padded"])]
        for layout in v.dom_layouts:
            r = runs[layout]
            print(f"{label('locked', lock, layout):22} {statistics.median(r):14,.0f} ops/s   "
                  f"[{min(r):,.0f}-{max(r):,.0f}]")
        print(f"{'':22} xen / padded {statistics.median(ratios):.2f}x   [{min(ratios):.2f}-{max(ratios):.2f}]")


def vs_c(names, frame_counts, repeat: int, cpu: int | None, call_ms: float) -> int:
    """The compiled loop against the C port: a table of ns/op and ratios. 0 if every ratio was measured."""
    import os
    import platform
    import time

    from testbed import loops, native
    from testbed.hostinfo import _cpu_model

    try:
        nat = native.Native()
    except native.NoCompiler as e:
        print(f"bench: --vs-c needs a C compiler: {e}", file=sys.stderr)
        return 2
    except native.OutOfStep as e:
        print(f"bench: --vs-c: {e}", file=sys.stderr)
        return 1
    allowed = sorted(os.sched_getaffinity(0))
    cpu = allowed[-1] if cpu is None else cpu
    if cpu not in allowed:
        print(f"bench: --cpu {cpu}: not one of this process's CPUs {allowed}", file=sys.stderr)
        return 2
    os.sched_setaffinity(0, {cpu})
    model = _cpu_model() or platform.processor() or "unknown CPU"
    print(f"# compiled loop (numba) vs the same loop in C ({native.compiler_version(nat.cc)} "
          f"{' '.join(native.CFLAGS[:2])}), uniform workload, 1 vCPU, cost model off,")
    print(f"# pinned to CPU {cpu} of {model}; {repeat} rounds of {PAIRS} calls of each, alternating, "
          f"~{call_ms:g} ms a call;")
    print("# a round's ns/op: each loop's fastest call; figures: median over rounds; "
          "ratio = numba / C per round, median [min-max]")
    print(f"{'frames':>6} {'variant':22} {'numba ns/op':>12} {'C ns/op':>9} {'ratio':>7}   spread")
    rows = []
    for frames in frame_counts:
        for name, lock, layout in with_locks(names):
            row = label(name, lock, layout)
            # Both loops run on the same arrays, one after the other, each going on from the
            # state the other left (they do the same work): the same physical pages, so the
            # same cache-set conflicts for both.
            ours = _loop_args(name, frames, lock, layout)
            c_run = nat.bind(*ours)

            def jit_run(n, ours=ours):
                return loops.run_ops(n, 0, *ours)

            def c_call(n, c_run=c_run):
                return c_run(n, 0)

            # Warm both (caches, TLB, branch predictors) and size a call to about call_ms.
            for f in (jit_run, c_call):
                f(20_000)
            t0 = time.perf_counter()
            jit_run(200_000)
            n = max(20_000, int(200_000 * call_ms * 1e-3 / (time.perf_counter() - t0)))
            jit_ns, c_ns, ratios = [], [], []
            for r in range(repeat):
                # A round: PAIRS calls of each, alternating; each side's figure is its fastest call
                # (interference from other work on the host only ever adds time).
                best = {jit_run: float("inf"), c_call: float("inf")}
                for k in range(PAIRS):
                    for f in ((jit_run, c_call) if (r + k) % 2 == 0 else (c_call, jit_run)):
                        t0 = time.perf_counter()
                        st = f(n)
                        best[f] = min(best[f], (time.perf_counter() - t0) / n * 1e9)
                        if st != 0:
                            print(f"bench: {row} stopped with status {st}", file=sys.stderr)
                            return 1
                jit_ns.append(best[jit_run])
                c_ns.append(best[c_call])
                ratios.append(jit_ns[-1] / c_ns[-1])
            j, c, q = statistics.median(jit_ns), statistics.median(c_ns), statistics.median(ratios)
            rows.append((frames, row, j, c, q))
            print(f"{frames:>6} {row:22} {j:12.1f} {c:9.1f} {q:6.2f}x   [{min(ratios):.2f}-{max(ratios):.2f}]")
    nat.close()
    worst = max(rows, key=lambda r: r[4])
    print(f"# worst: {worst[1]} at {worst[0]} frames, {worst[4]:.2f}x")
    return 0


def vs_xen(specs, frames: int, repeat: int, cpu: int | None, call_ms: float) -> int:
    """A Xen tree's own code against the C port of its transcription (the old design: locked,
    ticket lock, Xen's layout; the seed: lockless), the same loop in the same process: ns/op of
    both and their ratio, measured as --vs-c does. 0 if every row ran."""
    import dataclasses
    import os
    import time

    from testbed import abi, config, native
    from testbed import variants as registry
    from testbed.errors import UsageError
    from testbed.variants import xen as xen_design

    nat = native.Native()
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[-1] if cpu is None else cpu})
    print(f"# Xen's own domain_page.c vs the C port of its transcription ({native.compiler_version(nat.cc)} -O2), "
          f"uniform workload, 1 vCPU, {frames} frames, cost model off; ratio = Xen / port per round, median")
    print(f"{'variant':28} {'port of':9} {'Xen ns/op':>10} {'port ns/op':>10} {'ratio':>7}   spread")
    for text in specs:
        tree, patches = xen_design.spec(text)
        try:
            xcfg = config.validate(RunConfig(variant="xen", xen_tree=tree, xen_patches=patches, vcpus=1,
                                             frames=frames, cost_flush_one=0, cost_flush_all=0, cost_walk=0,
                                             cost_refill=0))
        except UsageError as e:
            print(f"bench: {text}: {e}", file=sys.stderr)
            return 2
        kind = xen_design.shape(xen_design.build_of(xcfg))
        if kind is None:
            print(f"bench: {text}: its structs have the shape of no transcribed design", file=sys.stderr)
            return 2
        tcfg = config.validate(dataclasses.replace(xcfg, variant=kind, xen_tree=None, xen_patches=(),
                                                   **({"lock": "ticket", "dom_layout": "xen"} if kind == "locked"
                                                      else {})))
        runs = []
        for cfg, loop in ((xcfg, xen_design.runner(xcfg).native), (tcfg, nat)):
            p = config.params(cfg)
            p[abi.P_CHUNK_CYCLES] = 1 << 62
            bound = loop.bind(*harness.private_state(cfg, p)[2])
            runs.append(lambda n, bound=bound: bound(n, 0))
        for f in runs:
            f(20_000)
        t0 = time.perf_counter()
        runs[0](200_000)
        n = max(20_000, int(200_000 * call_ms * 1e-3 / (time.perf_counter() - t0)))
        xs, ts, ratios = [], [], []
        for r in range(repeat):
            best = [float("inf"), float("inf")]
            for k in range(PAIRS):
                for i in ((0, 1) if (r + k) % 2 == 0 else (1, 0)):
                    t0 = time.perf_counter()
                    st = runs[i](n)
                    best[i] = min(best[i], (time.perf_counter() - t0) / n * 1e9)
                    if st != 0:
                        print(f"bench: {text} stopped with status {st}", file=sys.stderr)
                        return 1
            xs.append(best[0])
            ts.append(best[1])
            ratios.append(best[0] / best[1])
        name = xen_design.label(xcfg)
        print(f"{name:28} {kind:9} {statistics.median(xs):10.1f} {statistics.median(ts):10.1f} "
              f"{statistics.median(ratios):6.2f}x   [{min(ratios):.2f}-{max(ratios):.2f}]")
    nat.close()
    return 0


YARDSTICK = Path("shared") / "yardstick" / "testbed_op.c"
YARDSTICK_ROUNDS_S = 0.5     # one run of the C loop: its own median of 5 runs of a tenth of a second each


def find_yardstick(given: str | None) -> Path | None:
    """The yardstick's source: ``given``, else $TESTBED_YARDSTICK, else shared/yardstick/testbed_op.c in
    the nearest parent directory of this checkout that has one; None if there is none."""
    if given or os.environ.get("TESTBED_YARDSTICK"):
        return Path(given or os.environ["TESTBED_YARDSTICK"])
    for folder in Path(__file__).resolve().parents[1].parents:
        if (folder / YARDSTICK).is_file():
            return folder / YARDSTICK
    return None


def yardstick(frame_counts, repeat: int, cpu: int | None, source: Path | None) -> int:
    """The minimal C loop beside the compiled directmap loop, same CPU, interleaved rounds: ns/op and ratio."""
    from testbed import loops, native

    if source is None or not source.is_file():
        print(f"bench: yardstick: {source or YARDSTICK} not found; give its path with --yardstick PATH",
              file=sys.stderr)
        return 2
    cc = native.compiler()
    if cc is None:
        print("bench: yardstick: no C compiler found (looked for $CC, cc, gcc, clang)", file=sys.stderr)
        return 2
    allowed = sorted(os.sched_getaffinity(0))
    cpu = allowed[-1] if cpu is None else cpu
    if cpu not in allowed:
        print(f"bench: --cpu {cpu}: not one of this process's CPUs {allowed}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="testbed-yardstick-") as tmp:
        exe = os.path.join(tmp, "testbed_op")
        res = subprocess.run([cc, "-O2", "-march=native", str(source), "-o", exe], capture_output=True, text=True)
        if res.returncode != 0:
            print(f"bench: yardstick: {cc} could not build {source}: {res.stderr.strip()[-300:]}", file=sys.stderr)
            return 1
        old = os.sched_getaffinity(0)
        os.sched_setaffinity(0, {cpu})
        try:
            print(f"\n# the minimal C loop ({source}, {native.compiler_version(cc)} -O2 -march=native) beside the "
                  f"compiled directmap loop,\n# uniform workload, 1 vCPU, cost model off, both pinned to CPU {cpu}; "
                  f"{repeat} rounds, each the median of 5 runs of {YARDSTICK_ROUNDS_S / 5:g} s of either; "
                  "ratio = ours / C per round, median [min-max]")
            print(f"{'frames':>6} {'directmap ns/op':>16} {'C loop ns/op':>13} {'ratio':>7}   spread")
            for frames in frame_counts:
                ours = _loop_args("directmap", frames)
                loops.run_ops(200_000, 0, *ours)
                t0 = time.perf_counter()
                loops.run_ops(200_000, 0, *ours)
                n = max(100_000, int(200_000 * YARDSTICK_ROUNDS_S / 5 / (time.perf_counter() - t0)))
                jit_ns, c_ns, ratios = [], [], []
                for r in range(repeat):
                    for side in (("jit", "c") if r % 2 == 0 else ("c", "jit")):
                        if side == "jit":
                            calls = []
                            for _ in range(5):
                                t0 = time.perf_counter()
                                loops.run_ops(n, 0, *ours)
                                calls.append((time.perf_counter() - t0) / n * 1e9)
                            jit_ns.append(statistics.median(calls))
                        else:
                            out = subprocess.run([exe, "directmap", str(YARDSTICK_ROUNDS_S), "--frames", str(frames),
                                                  "--cpu", str(cpu)], capture_output=True, text=True)
                            m = re.search(r"([0-9.]+) ns/op", out.stdout)
                            if out.returncode != 0 or m is None:
                                print(f"bench: yardstick: {exe} directmap: {(out.stdout + out.stderr).strip()[-300:]}",
                                      file=sys.stderr)
                                return 1
                            c_ns.append(float(m.group(1)))
                    ratios.append(jit_ns[-1] / c_ns[-1])
                j, c, q = statistics.median(jit_ns), statistics.median(c_ns), statistics.median(ratios)
                print(f"{frames:>6} {j:16.2f} {c:13.2f} {q:6.2f}x   [{min(ratios):.2f}-{max(ratios):.2f}]")
        finally:
            os.sched_setaffinity(0, old)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--duration", type=float, default=1.0)
    ap.add_argument("--warmup", type=float, default=0.3)
    ap.add_argument("--frames", type=int, default=256,
                    help="frames in the arena (default 256: 1 MiB, cache-resident, so that the figures measure the "
                         "mapping work rather than this host's memory system)")
    ap.add_argument("--variants", default=None,
                    help="comma-separated variants (default: directmap,locked,lockless; with --vs-c every design "
                         "of the registry; locked under each of its locks, in each layout of its domain words)")
    ap.add_argument("--vs-c", action="store_true",
                    help="instead: the compiled loop against the same loop in C, at 256 and 4096 frames "
                         "(or --frames when given)")
    ap.add_argument("--only", default=",".join(SECTIONS),
                    help=f"comma-separated sections to print, of {','.join(SECTIONS)} (default: all)")
    ap.add_argument("--vs-xen", default=None, metavar="SPECS",
                    help="instead: Xen's own code against the C port of its transcription, for each comma-separated "
                         "xen:TREE[+PATCH] (at --frames, default 256)")
    ap.add_argument("--cpu", type=int, default=None,
                    help="--vs-c and the yardstick: the CPU to pin to (default: the last allowed)")
    ap.add_argument("--call-ms", type=float, default=15.0, help="--vs-c: about how long one timed call runs")
    ap.add_argument("--yardstick", default=None, metavar="PATH",
                    help="the minimal C loop's source (default: $TESTBED_YARDSTICK, else shared/yardstick/testbed_op.c "
                         "in the nearest parent folder of this checkout that has one)")
    args = ap.parse_args()
    from testbed import variants as registry

    if args.vs_xen:
        return vs_xen([x.strip() for x in args.vs_xen.split(",") if x.strip()], args.frames, args.repeat, args.cpu,
                      args.call_ms)
    if args.variants is not None:
        names = [x.strip() for x in args.variants.split(",") if x.strip()]
    elif args.vs_c:
        names = [v.name for v in registry.REAL]
    else:
        names = ["directmap", "locked", "lockless"]

    for name in names:
        if name not in registry.VARIANTS:
            ap.error(f"--variants: unknown variant {name!r}; choose from {','.join(registry.VARIANTS)}")
    if args.repeat < 1:
        ap.error("--repeat: must be at least 1")
    only = [x.strip() for x in args.only.split(",") if x.strip()]
    if not only or any(x not in SECTIONS for x in only):
        ap.error(f"--only {args.only!r}: name sections among {','.join(SECTIONS)}")
    if args.vs_c:
        frame_counts = (args.frames,) if frames_given(sys.argv) else (256, 4096)
        return vs_c(names, frame_counts, args.repeat, args.cpu, args.call_ms)
    common = dict(duration=args.duration, warmup=args.warmup, frames=args.frames,
                  cost_flush_one=0, cost_flush_all=0, cost_walk=0, cost_refill=0)

    if "kernel" in only:
        print(f"# compiled loop alone, in-process, cost model off, {args.frames} frames, "
              f"median of {2 * args.repeat + 1} calls of 2M operations (variants interleaved)")
        kn = kernel_ns(with_locks(names), args.frames, 2 * args.repeat + 1)
        for row, ns_op in kn.items():
            ratio = f"{ns_op / kn['directmap']:.2f}x directmap" if "directmap" in kn else ""
            print(f"{row:22} {ns_op:8.1f} ns/op   {ratio}")

    if "yardstick" in only:
        counts = (args.frames,) if frames_given(sys.argv) else (256, 4096)
        st = yardstick(counts, args.repeat, args.cpu, find_yardstick(args.yardstick))
        if st != 0 and only == ["yardstick"]:
            return st

    if "contended" in only and "locked" in names:
        contended(args.repeat, common)
    if "harness" in only:
        print(f"\n# through the harness: 1 pinned vCPU, cost model off, median of {args.repeat} runs of "
              f"{args.duration} s (variants interleaved)")
        runs = {name: [] for name in names}
        for s in range(1, args.repeat + 1):
            for name in names:
                runs[name].append(1e9 / ops_per_s(variant=name, vcpus=1, seed=s, **common))
        ns = {name: statistics.median(r) for name, r in runs.items()}
        for name in names:
            spread = (max(runs[name]) - min(runs[name])) / 2 / ns[name] * 100
            ratio = f"{ns[name] / ns['directmap']:.2f}x directmap" if "directmap" in ns else ""
            print(f"{name:12} {ns[name]:8.1f} ns/op   +/-{spread:5.1f}%   {ratio}")

    if "scaling" in only:
        topo = host_topology()
        n = topo.physical_in(allowed_cpus(topo, None))
        for workload in ("uniform", "guest"):
            print(f"\n# directmap scaling, {workload} workload, 1 and {n} vCPUs (one per physical core), "
                  f"median of {args.repeat} runs, 1 and {n} vCPUs alternating")
            ones, alls = [], []
            for s in range(1, args.repeat + 1):
                ones.append(ops_per_s(variant="directmap", vcpus=1, seed=s, workload=workload, **common))
                alls.append(ops_per_s(variant="directmap", vcpus=n, seed=s, workload=workload, **common))
            one, alln = statistics.median(ones), statistics.median(alls)
            print(f"1 vCPU   {one:14,.0f} ops/s")
            print(f"{n} vCPUs  {alln:14,.0f} ops/s   linear {n * one:14,.0f}   efficiency {alln / (n * one):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
