"""What a result needs to say about the machine it came from (docs/variants.md, conventions 8)."""

from __future__ import annotations

import functools
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from .timing import tsc_hz
from .topology import host_topology

PACKAGES = ("testbed", "numpy", "numba", "llvmlite", "multiprocess", "psutil")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(pkg: str) -> str | None:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


def git_revision() -> str | None:
    here = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    rev = out.stdout.strip()
    dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True, timeout=5)
    return rev + ("-dirty" if dirty.returncode == 0 and dirty.stdout.strip() else "")


@functools.lru_cache(maxsize=1)
def host() -> dict:
    topo = host_topology()
    logical = len(topo.online)
    physical = topo.physical_cores
    return {
        "cpu_model": _cpu_model(),
        "logical_cpus": logical,
        "physical_cores": physical,
        "smt": logical > physical,
        "affinity": sorted(os.sched_getaffinity(0)),
        "kernel": platform.release(),
        "machine": platform.machine(),
        "hostname": platform.node(),
        "python": sys.version.split()[0],
        "packages": {p: _version(p) for p in PACKAGES},
        "git_revision": git_revision(),
        "tsc_hz": round(tsc_hz()),
    }
