#!/usr/bin/env python3
"""Many vCPUs on this host, as a user runs them: repeated oversubscribed runs, each a fresh
``testbed`` command, with its wall time, start-up, stop and verdict.

    python scripts/many_vcpus.py                 # 20 x 64 vCPUs per variant, then 256 vCPUs
    python scripts/many_vcpus.py --runs 5 --vcpus 64 --variants lockless
    python scripts/many_vcpus.py --runs 0 --big 256 --big-sched host

Too slow for the default test run (a few minutes); it exits 1 if any run ends in FAILURE
or takes longer than the limits the project states (start measuring within 15 s of launch,
the whole 256-vCPU command within 30 s).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time


def one(variant: str, vcpus: int, duration: float, extra: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "r.json")
        cmd = ["testbed", "run", "--variant", variant, "--vcpus", str(vcpus), "--oversubscribe", "--duration",
               str(duration), "--quiet", "--json", out, *extra]
        t = time.monotonic()
        p = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.monotonic() - t
        try:
            with open(out) as f:
                r = json.load(f)
        except (OSError, ValueError):
            return {"cmd": " ".join(cmd), "rc": p.returncode, "wall_s": wall, "verdict": "NO RESULT",
                    "why": (p.stderr or p.stdout).strip().splitlines()[-1:]}
    return {"cmd": " ".join(cmd), "rc": p.returncode, "wall_s": wall, "verdict": r["verdict"],
            "since_launch_s": r["startup"].get("since_launch_s"), "fork_ms_first": r["startup"].get("fork_ms_first_tenth"),
            "fork_ms_last": r["startup"].get("fork_ms_last_tenth"), "drain_s": r["stop"].get("drain_s"),
            "ops_per_s": r["totals"]["ops_per_s"], "sched": r["sched"]["model"],
            "parent_mib": r["memory"]["parent_peak_mib"], "vcpus_uss_mib": r["memory"]["vcpus_uss_mib"],
            "starved_max_s": r["fairness"]["starved_max_s"], "run_spread": r["fairness"]["run_spread"],
            "why": r["failure"]["message"] if r["failure"] else None}


def show(tag: str, d: dict) -> None:
    if d["verdict"] == "NO RESULT":
        print(f"{tag}: rc {d['rc']} after {d['wall_s']:.1f} s, no result: {d['why']}", flush=True)
        return
    print(f"{tag}: {d['verdict']} rc {d['rc']} wall {d['wall_s']:.1f} s, measuring {d['since_launch_s']:.1f} s "
          f"after launch, fork {d['fork_ms_first']:.1f} -> {d['fork_ms_last']:.1f} ms, drain {d['drain_s']:.2f} s, "
          f"{d['ops_per_s']:,.0f} ops/s ({d['sched']}), parent {d['parent_mib']} MiB, vCPUs {d['vcpus_uss_mib']} MiB"
          + (f"; {d['why']}" if d["why"] else ""), flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", default="lockless,locked")
    ap.add_argument("--runs", type=int, default=20, help="runs per variant at --vcpus (default 20)")
    ap.add_argument("--vcpus", type=int, default=64)
    ap.add_argument("--duration", type=float, default=3.0)
    ap.add_argument("--big", type=int, default=256, help="then one run per variant with this many vCPUs (0: none)")
    ap.add_argument("--big-duration", type=float, default=5.0)
    ap.add_argument("--big-sched", default=None, help="--sched for the big runs")
    args = ap.parse_args()
    bad = 0
    for variant in args.variants.split(","):
        fails = 0
        for i in range(args.runs):
            d = one(variant, args.vcpus, args.duration, [])
            show(f"{variant} {args.vcpus} vCPUs run {i + 1}/{args.runs}", d)
            fails += d["verdict"] != "SUCCESS"
        if args.runs:
            print(f"{variant}: {fails} of {args.runs} runs not SUCCESS", flush=True)
        bad += fails
    for variant in args.variants.split(",") if args.big else ():
        extra = ["--sched", args.big_sched] if args.big_sched else []
        d = one(variant, args.big, args.big_duration, extra)
        show(f"{variant} {args.big} vCPUs", d)
        late = d["verdict"] == "NO RESULT" or d["since_launch_s"] > 15 or d["wall_s"] > 30
        if late and d["verdict"] == "SUCCESS":
            print("  over the limits: measuring must start within 15 s of launch and the command end within 30 s")
        bad += d["verdict"] != "SUCCESS" or late
    print("all runs SUCCESS within the limits" if not bad else f"{bad} runs failed or were late")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
