#!/usr/bin/env python3
"""How fast stress finds each negative control: seconds to the first violation.

For every negative control, runs the harness with a Stressor (the same as
``testbed stress`` with its defaults: quiescent checks every second, no
shuffle or stutter) over several seeds, with the run options the control
needs (``testbed variants --json`` lists them), and prints the median time
from the start of the run to the first violation the checks counted, or to
the failure that ended the run, and whether the check named for the control
is among those that fired. A control that is not caught within --duration
(5 s by default, as ``testbed run --vcpus 2 --duration 5``), or caught only by
other checks, is a failure of the checks, and this script exits 1.
"""

from __future__ import annotations

import argparse
import statistics
import sys

from testbed import harness
from testbed import variants as registry
from testbed.config import RunConfig
from testbed.stress import StressPlan, Stressor
from testbed.topology import allowed_cpus, host_topology


def detect(name: str, seed: int, duration: float, vcpus: int) -> float | None:
    """Seconds to the first violation, or None when the control was not caught by its own check."""
    v = registry.get(name)
    cpus = allowed_cpus(host_topology(), None)
    res = harness.run(RunConfig(variant=name, vcpus=vcpus, duration=duration, warmup=0.0, seed=seed,
                                **dict(v.options)), hooks=Stressor(StressPlan(), cpus, seed))
    t = res.get("stress", {}).get("first_violation_s")
    if t is None and res["failure"] is not None:
        t = res["failure"].get("t")
    if t is None:
        t = duration              # found by the checks at the end of the run
    caught = any(res["checks"].get(k, 0) > 0 for k in v.catches)
    return t if res["verdict"] == "FAILURE" and caught else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--duration", type=float, default=5.0, help="seconds each run may take to catch it (default 5)")
    ap.add_argument("--vcpus", type=int, default=2)
    args = ap.parse_args()
    missed = False
    print(f"# seconds to detection, {args.vcpus} vCPUs, seeds 1..{args.seeds}, within {args.duration:g} s")
    for v in registry.CONTROLS:
        times = [detect(v.name, s, args.duration, args.vcpus) for s in range(1, args.seeds + 1)]
        found = [t for t in times if t is not None]
        missed |= len(found) < len(times)
        med = f"{statistics.median(found):.3f}" if found else "-"
        print(f"{v.name:20} median {med:>7} s   per seed {['miss' if t is None else round(t, 3) for t in times]}"
              f"   by {'/'.join(v.catches)}" + (f" with {' '.join(v.cli_options)}" if v.options else ""))
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
