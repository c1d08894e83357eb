#!/usr/bin/env python3
"""Benchmark: cost per operation of each variant, and how the harness scales.

Prints, from real runs of the harness (pinned worker processes):

1. nanoseconds per operation on one vCPU for each variant, TLB cost model off,
   uniform workload: the median of --repeat runs, and its ratio to directmap;
2. directmap throughput on 1 vCPU and on all physical cores, and the scaling
   efficiency all-core / (N x one-vCPU), each the median of --repeat runs, for
   the memory-bound uniform workload and for the compute-bound guest workload
   (which shows what the harness itself allows).

All figures of one invocation come from the same machine in the same minute;
compare ratios, not absolute times, across invocations.
"""

from __future__ import annotations

import argparse
import statistics
import sys

from testbed import harness
from testbed.config import RunConfig
from testbed.topology import allowed_cpus, host_topology


def ops_per_s(**kw) -> float:
    res = harness.run(RunConfig(**kw))
    if res["verdict"] != "SUCCESS":
        sys.exit(f"bench: run {kw} ended {res['verdict']}: {res['checks']} {res['failure']}")
    return res["totals"]["ops_per_s"]


def kernel_ns(names, frames: int, repeat: int, n: int = 2_000_000) -> dict:
    """ns per operation of the compiled loop alone, in this process (no harness, no pinning),
    variants interleaved; the median of ``repeat`` calls of ``n`` operations each."""
    import time

    from testbed import abi, config, kernels, tlb

    setups = {}
    for name in names:
        cfg = config.validate(RunConfig(variant=name, vcpus=1, frames=frames, cost_flush_one=0, cost_flush_all=0,
                                        cost_walk=0))
        p = config.params(cfg)
        p[abi.P_CHUNK_CYCLES] = 1 << 62
        layout = harness.build_layout(cfg)
        views = layout.views(bytearray(layout.size))
        harness.init_state(views, cfg)
        args = harness.kernel_args(views, p, tlb.make_tlb(cfg.tlb_entries // cfg.tlb_ways, cfg.tlb_ways),
                                   kernels.seed_state(1, 0))
        kernels.run_ops(1000, 0, *args)
        setups[name] = args
    times = {name: [] for name in names}
    for _ in range(repeat):
        for name, args in setups.items():
            t0 = time.perf_counter()
            kernels.run_ops(n, 0, *args)
            times[name].append((time.perf_counter() - t0) / n * 1e9)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--duration", type=float, default=1.0)
    ap.add_argument("--warmup", type=float, default=0.3)
    ap.add_argument("--frames", type=int, default=256,
                    help="frames in the arena (default 256: 1 MiB, cache-resident, so that the figures measure the "
                         "mapping work rather than this host's memory system)")
    ap.add_argument("--variants", default="directmap,locked,lockless")
    args = ap.parse_args()
    common = dict(duration=args.duration, warmup=args.warmup, frames=args.frames,
                  cost_flush_one=0, cost_flush_all=0, cost_walk=0)

    names = args.variants.split(",")
    print(f"# compiled loop alone, in-process, cost model off, {args.frames} frames, median of {2 * args.repeat + 1} "
          f"calls of 2M operations (variants interleaved)")
    kn = kernel_ns(names, args.frames, 2 * args.repeat + 1)
    for name in names:
        ratio = f"{kn[name] / kn['directmap']:.2f}x directmap" if "directmap" in kn else ""
        print(f"{name:12} {kn[name]:8.1f} ns/op   {ratio}")

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
