#!/usr/bin/env python3
"""Benchmark: cost per operation of each variant, and how the harness scales.

Prints, from real runs of the harness (pinned worker processes):

1. nanoseconds per operation on one vCPU for each variant, TLB cost model off,
   uniform workload: the median of --repeat runs, and its ratio to directmap;
2. directmap throughput on 1 vCPU and on all physical cores, and the scaling
   efficiency all-core / (N x one-vCPU), each the median of --repeat runs.

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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--duration", type=float, default=1.0)
    ap.add_argument("--warmup", type=float, default=0.3)
    ap.add_argument("--frames", type=int, default=4096)
    ap.add_argument("--variants", default="directmap,locked,lockless")
    args = ap.parse_args()
    common = dict(duration=args.duration, warmup=args.warmup, frames=args.frames,
                  cost_flush_one=0, cost_flush_all=0, cost_walk=0)

    print(f"# cost per operation, 1 vCPU, cost model off, median of {args.repeat} runs of {args.duration} s")
    ns = {}
    for name in args.variants.split(","):
        runs = [1e9 / ops_per_s(variant=name, vcpus=1, seed=s, **common) for s in range(1, args.repeat + 1)]
        ns[name] = statistics.median(runs)
        spread = (max(runs) - min(runs)) / ns[name] * 100
        ratio = f"{ns[name] / ns['directmap']:.2f}x directmap" if "directmap" in ns else ""
        print(f"{name:12} {ns[name]:8.1f} ns/op   spread {spread:5.1f}%   {ratio}")

    topo = host_topology()
    n = topo.physical_in(allowed_cpus(topo, None))
    print(f"\n# directmap scaling, 1 and {n} vCPUs (one per physical core), median of {args.repeat} runs")
    one = statistics.median(ops_per_s(variant="directmap", vcpus=1, seed=s, **common)
                            for s in range(1, args.repeat + 1))
    alln = statistics.median(ops_per_s(variant="directmap", vcpus=n, seed=s, **common)
                             for s in range(1, args.repeat + 1))
    print(f"1 vCPU   {one:14,.0f} ops/s")
    print(f"{n} vCPUs  {alln:14,.0f} ops/s   linear {n * one:14,.0f}   efficiency {alln / (n * one):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
