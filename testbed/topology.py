"""Host CPU topology and the placement of vCPUs on host cores.

vCPUs go one per physical core first (the first logical CPU of each core, in
core order), then onto the SMT siblings, and only with ``oversubscribe`` do
several vCPUs share one logical CPU (which models vCPU preemption).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from .errors import UsageError

SYS_CPU = "/sys/devices/system/cpu"


@dataclass(frozen=True)
class Topology:
    online: tuple[int, ...]             # logical CPUs the host has online
    core_of: dict                       # logical CPU -> (package, core) id

    @property
    def physical_cores(self) -> int:
        return len(set(self.core_of.values()))

    def order(self, allowed) -> list[int]:
        """Logical CPUs of ``allowed``: first one per physical core, then the siblings."""
        firsts, rest, seen = [], [], set()
        for cpu in sorted(allowed):
            core = self.core_of.get(cpu, (0, cpu))
            (rest if core in seen else firsts).append(cpu)
            seen.add(core)
        return firsts + rest

    def physical_in(self, allowed) -> int:
        return len({self.core_of.get(c, (0, c)) for c in allowed})


def _read_int(path: str, default: int) -> int:
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return default


def host_topology() -> Topology:
    online = parse_cpu_list(_read_text(f"{SYS_CPU}/online") or f"0-{(os.cpu_count() or 1) - 1}")
    core_of = {}
    for cpu in online:
        base = f"{SYS_CPU}/cpu{cpu}/topology"
        core_of[cpu] = (_read_int(f"{base}/physical_package_id", 0), _read_int(f"{base}/core_id", cpu))
    return Topology(tuple(online), core_of)


def _read_text(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def parse_cpu_list(text: str) -> list[int]:
    """'0,2-5' -> [0, 2, 3, 4, 5]. Raises ValueError on malformed text."""
    cpus = set()
    for part in text.split(","):
        part = part.strip()
        if not part:
            raise ValueError(f"empty entry in CPU list {text!r}")
        if "-" in part:
            lo, hi = part.split("-", 1)
            lo, hi = int(lo), int(hi)
            if lo > hi or lo < 0:
                raise ValueError(f"bad CPU range {part!r}")
            cpus.update(range(lo, hi + 1))
        else:
            c = int(part)
            if c < 0:
                raise ValueError(f"bad CPU number {part!r}")
            cpus.add(c)
    return sorted(cpus)


def allowed_cpus(topo: Topology, cpus_arg: str | None) -> list[int]:
    """The host CPUs this run may use: --cpus, within what this process may run on."""
    affinity = set(os.sched_getaffinity(0)) & set(topo.online)
    if cpus_arg is None:
        return sorted(affinity)
    try:
        wanted = parse_cpu_list(cpus_arg)
    except ValueError as e:
        raise UsageError(f"--cpus {cpus_arg!r} is not a CPU list ({e}); write it like 0,2-5") from None
    missing = [c for c in wanted if c not in topo.online]
    if missing:
        raise UsageError(
            f"--cpus names CPU {missing[0]}, which this host does not have (online: {format_cpu_list(topo.online)})"
        )
    barred = [c for c in wanted if c not in affinity]
    if barred:
        raise UsageError(
            f"--cpus names CPU {barred[0]}, which this process may not run on "
            f"(allowed: {format_cpu_list(sorted(affinity))}); pick CPUs from that list"
        )
    return wanted


def place(topo: Topology, allowed: list[int], vcpus: int, oversubscribe: bool) -> list[int]:
    """The host CPU for each vCPU, or a UsageError saying why it cannot be done."""
    order = topo.order(allowed)
    if vcpus > len(order) and not oversubscribe:
        raise UsageError(
            f"--vcpus {vcpus} needs {vcpus} CPUs, but only {len(order)} are allowed "
            f"({format_cpu_list(order)}); pass --oversubscribe to share CPUs, or lower --vcpus"
        )
    return [order[i % len(order)] for i in range(vcpus)]


def format_cpu_list(cpus) -> str:
    cpus = sorted(cpus)
    out, i = [], 0
    while i < len(cpus):
        j = i
        while j + 1 < len(cpus) and cpus[j + 1] == cpus[j] + 1:
            j += 1
        out.append(str(cpus[i]) if i == j else f"{cpus[i]}-{cpus[j]}")
        i = j + 1
    return ",".join(out)
