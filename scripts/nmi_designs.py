#!/usr/bin/env python3
"""Which designs survive NMIs: every real design under ``--nmi-rate R``, through the CLI.

Runs ``testbed run --vcpus 2 --duration 3 --nmi-rate 10000`` (by default) for each real
variant of the registry (``locked`` once per lock) and prints, per design, the verdict,
the check or failure that decided it, and the NMIs taken inside a map or unmap with
interrupts off. Each design's loop is compiled here first (or loaded from the cache), so
that the run's time bound (the duration plus a minute) measures the run, not a cold
compile. A run that does not end by itself within that bound is reported as a hang (and
counts as this script's own failure): a design that cannot be NMI-safe must fail by a
named check, never hang. Exit status 1 if any run hung or ended with neither
SUCCESS nor FAILURE.

    python scripts/nmi_designs.py [--vcpus 2] [--duration 3] [--seed 1] [--nmi-rate 10000] [--workload uniform]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from testbed import config, harness
from testbed import variants as registry
from testbed.config import RunConfig


def one(args: list[str], bound_s: float) -> tuple[str, dict | None]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "r.json"
        try:
            subprocess.run([sys.executable, "-m", "testbed", "run", "--quiet", "--json", str(out), *args],
                           capture_output=True, text=True, timeout=bound_s)
        except subprocess.TimeoutExpired:
            return "hang", None
        if not out.exists():
            return "no result", None
        res = json.loads(out.read_text())
        return res["verdict"], res


def decided_by(res: dict) -> str:
    """The failure's kind, or the checks that failed, or '-' for a clean run."""
    if res["failure"]:
        return res["failure"]["kind"]
    bad = [k for k, v in res["checks"].items() if v not in (0, True, None)]
    return ",".join(bad) or "-"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vcpus", type=int, default=2)
    ap.add_argument("--duration", type=float, default=3.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--nmi-rate", type=float, default=10000.0)
    ap.add_argument("--workload", default="uniform")
    a = ap.parse_args()
    bad = 0
    print(f"# --nmi-rate {a.nmi_rate:g} --vcpus {a.vcpus} --workload {a.workload} --duration {a.duration:g}")
    print(f"{'design':<16} {'verdict':<8} {'decided by':<34} {'NMIs':>8} {'inside':>8} {'irqs off':>8}")
    for v in registry.REAL:
        for lock in v.locks or (None,):
            args = ["--variant", v.name, "--vcpus", str(a.vcpus), "--duration", str(a.duration),
                    "--warmup", "0.5", "--seed", str(a.seed), "--nmi-rate", f"{a.nmi_rate:g}",
                    "--workload", a.workload]
            if lock:
                args += ["--lock", lock]
            cfg = config.validate(RunConfig(variant=v.name, lock=lock, vcpus=a.vcpus, workload=a.workload,
                                            nmi_rate=a.nmi_rate))
            harness.compile_kernels(cfg, config.params(cfg))
            verdict, res = one(args, bound_s=a.duration + 60)
            name = f"{v.name}:{lock}" if lock else v.name
            if res is None:
                bad += 1
                print(f"{name:<16} {verdict}")
                continue
            nmi = res.get("nmi") or {}
            print(f"{name:<16} {verdict:<8} {decided_by(res):<34} {nmi.get('taken', 0):>8,} "
                  f"{nmi.get('inside', 0):>8,} {nmi.get('inside_irqs_off', 0):>8,}", flush=True)
            bad += verdict not in ("SUCCESS", "FAILURE")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
