#!/usr/bin/env python3
"""Every real design on every workload, every lock, every negative control, through the CLI.

Runs ``testbed run --vcpus 2 --duration 5`` (by default) for each real variant
of the registry on each workload (``locked`` once per lock), expecting
SUCCESS (exit 0), and for each negative control, expecting FAILURE (exit 1)
with one of the checks the registry says must catch it. Prints one line per
run and exits 1 if any run ends otherwise. The old design's pool runs out on
a 16-deep walk when every vCPU walks at once (a finding, see the README), so
``locked`` walks 8 deep on ``ptwalk`` (and nests 4 deep on ``nest-same``, where
it maps each nested map of the one MFN to a slot of its own); pass --strict to
hold it to the default depth too. A control runs with the options the registry
lists for it (``testbed variants --json``; ``lockless-noirqsave``: ``--irq-rate``,
which only interrupts can catch).

With ``--irq-rate R`` every run has simulated interrupts. A handler's mapping
needs a slot on top of the deepest walk, so a design whose default slots hold
exactly that walk (``kmap-local``'s 16) runs with the slots its ``validate``
asks for. Under interrupts the seed's ``lockless`` leaks slots on the nested
workloads, ``ptwalk`` and ``nest-same`` (a finding, README "Simulated
interrupts": a handler maps a frame the walk holds), so there it is expected
to end FAILURE with slot leaks, unless --strict.

    python scripts/verify_designs.py [--vcpus 2] [--duration 5] [--seed 1] [--strict] [--irq-rate R]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from testbed import irq
from testbed import variants as registry
from testbed.config import WORKLOADS, RunConfig, validate
from testbed.errors import UsageError


def run(args: list[str], retries: int = 1) -> tuple[int, dict | None]:
    """Exit status and result of one run; a run the watchdog stopped (a vCPU starved of CPU on a
    loaded host) is run again, up to ``retries`` times, and says so."""
    rc, res = _run_once(args)
    for _ in range(retries):
        if not (res and res["failure"] and res["failure"]["kind"] == "stalled"):
            break
        print(f"     rerun after a stall: {res['failure']['message']}", flush=True)
        rc, res = _run_once(args)
    return rc, res


def _run_once(args: list[str]) -> tuple[int, dict | None]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "r.json"
        p = subprocess.run([sys.executable, "-m", "testbed", "run", "--quiet", "--json", str(out), *args],
                           capture_output=True, text=True)
        res = json.loads(out.read_text()) if out.exists() else None
        if res is None:
            sys.stderr.write(p.stdout + p.stderr)
        return p.returncode, res


def slots_with_irq(variant: str, irq_rate: float) -> list[str]:
    """``--entries N`` when the design's default slots fail its own rule with interrupts on, else nothing."""
    entries = RunConfig(variant=variant).resolved().entries
    for more in range(irq.HANDLER_MAPS + 1):
        try:
            validate(RunConfig(variant=variant, irq_rate=irq_rate, entries=entries + more))
            return ["--entries", str(entries + more)] if more else []
        except UsageError:
            continue
    raise SystemExit(f"verify_designs: {variant} refuses its default slots plus a handler's under --irq-rate")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vcpus", type=int, default=2)
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--strict", action="store_true", help="no shallower walk for the old design")
    ap.add_argument("--only", default=None, help="comma-separated variants (default: all)")
    ap.add_argument("--irq-rate", type=float, default=0.0, help="simulated interrupts per second per vCPU")
    a = ap.parse_args()
    only = set(a.only.split(",")) if a.only else None
    common = ["--vcpus", str(a.vcpus), "--duration", str(a.duration), "--seed", str(a.seed)]
    if a.irq_rate:
        common += ["--irq-rate", f"{a.irq_rate:g}"]
    bad = 0
    for v in registry.REAL:
        if only and v.name not in only:
            continue
        for lock in v.locks or (None,):
            for wl in WORKLOADS:
                extra = ["--lock", lock] if lock else []
                if wl in ("ptwalk", "nest-same") and v.locks and not a.strict:
                    extra += ["--nest", "8" if wl == "ptwalk" else "4"]
                extra += slots_with_irq(v.name, a.irq_rate)
                rc, res = run(["--variant", v.name, "--workload", wl, *common, *extra])
                ok = rc == 0 and res is not None and res["verdict"] == "SUCCESS"
                if a.irq_rate and v.name == "lockless" and wl in ("ptwalk", "nest-same") and not a.strict:
                    # the finding: a handler mapping a frame the walk holds reaches the seed's slot leak
                    ok = rc == 1 and res is not None and res["checks"]["slot_leaks"] > 0
                bad += not ok
                label = v.name + (f":{lock}" if lock else "")
                why = "" if ok or res is None else f"  {res['failure'] and res['failure']['message']} {res['checks']}"
                rate = f"{res['totals']['ops_per_s']:>14,.0f} ops/s" if res else ""
                print(f"{'ok  ' if ok else 'BAD '} {label:18} {wl:8} exit {rc} {rate}{why}", flush=True)
    for v in registry.CONTROLS:
        if only and v.name not in only:
            continue
        if a.irq_rate:       # --irq-rate is in common already, at the rate asked for
            v = dataclasses.replace(v, options=tuple((k, x) for k, x in v.options if k != "irq_rate"))
        rate = dict(v.options).get("irq_rate", a.irq_rate)
        rc, res = run(["--variant", v.name, *common, *v.cli_options, *slots_with_irq(v.name, rate)])
        caught = [k for k in v.catches if res and res["checks"].get(k, 0) > 0]
        ok = rc == 1 and bool(caught)
        bad += not ok
        wl = dict(v.options).get("workload", "uniform")
        print(f"{'ok  ' if ok else 'BAD '} {v.name:19} {wl:9} exit {rc} caught by {caught or 'nothing'}", flush=True)
    print(f"{bad} unexpected results" if bad else "all as expected")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
