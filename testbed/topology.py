"""Host CPU topology, read from /sys and /proc, and where vCPUs are placed on it.

A host is packages, NUMA nodes (with the kernel's distance table), cores and
their SMT siblings, as Linux reports them under ``/sys/devices/system/{cpu,node}``.
The root of that tree moves with ``TESTBED_FSROOT=DIR`` (DIR holds ``sys/`` and
``proc/`` as a host's root does), as hwloc's ``HWLOC_FSROOT`` moves its own: the
tests read sysfs snapshots of real machines that way (tests/data/hwloc/), and a
user can check where vCPUs would go on a machine they have a snapshot of.

Grouping follows hwloc's Linux backend (hwloc/topology-linux.c): a core is the
set of its hardware threads (``core_cpus_list``, formerly ``thread_siblings_list``),
a package the set of ``package_cpus_list`` (formerly ``core_siblings_list``),
named by ``physical_package_id`` unless that is -1; ``core_id`` is only a label
(it repeats across the two dies of one AMD Magny-Cours package). Offline CPUs
(``cpuN/online`` 0, or absent from ``cpu/online``) have no topology and are only
listed. Node numbers may be sparse; each node's ``distance`` row lists the
online nodes in increasing order.

What a run may use is the online CPUs, within the cgroup cpuset (v1 ``cpuset``
or ``cgroup`` mounts, cgroup v2 ``cpuset.cpus.effective``: how Slurm confines a
job step) and the process's ``Cpus_allowed_list``. On the live host the
process's affinity already says all of that. Under ``TESTBED_FSROOT`` it is read
from the tree (its ``proc/self/cpuset``, ``proc/mounts``, ``proc/self/status``),
never from this process. The same goes for memory nodes (``Mems_allowed_list``,
``cpuset.mems``).

Placements (``place``): ``compact`` fills a node's cores (one thread each), then
the next node's, SMT siblings only once every core has a vCPU; ``scatter`` deals
the cores round-robin across the nodes (and within a node across its packages),
siblings last too; ``given`` takes ``--cpus`` in the order written. Both orders
are the testbed's own choice, after the usual meaning of the names (OpenMP's
``OMP_PROC_BIND=close|spread``, hwloc-distrib).

For other modules (``predict``): ``Topology.relation(a, b)`` says how two CPUs
share hardware ("self", "smt", "package", "node", "remote") and
``Topology.pair(relation)`` finds two allowed CPUs in that relation.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from .errors import UsageError

PLACEMENTS = {
    "compact": "fill one node's cores, then the next node's; SMT siblings last",
    "scatter": "round-robin across NUMA nodes (and a node's packages); SMT siblings last",
    "given": "--cpus in the order written",
}
DEFAULT_PLACEMENT = "compact"
RELATIONS = ("self", "smt", "package", "node", "remote")


# --- reading the tree ----------------------------------------------------------------

def fsroot() -> str | None:
    """The directory TESTBED_FSROOT names, or None for the live host."""
    return os.environ.get("TESTBED_FSROOT") or None


class Tree:
    """Files of a host's root: "/" or a snapshot under TESTBED_FSROOT."""

    def __init__(self, root: str | None = None):
        self.root = root if root is not None else (fsroot() or "/")
        self.live = self.root == "/"

    def path(self, rel: str) -> str:
        return os.path.join(self.root, rel.lstrip("/"))

    def text(self, rel: str) -> str | None:
        try:
            with open(self.path(rel), errors="replace") as f:
                return f.read().replace("\0", "").strip()
        except OSError:
            return None

    def exists(self, rel: str) -> bool:
        return os.path.exists(self.path(rel))

    def listdir(self, rel: str) -> list[str]:
        try:
            return os.listdir(self.path(rel))
        except OSError:
            return []


def parse_cpu_list(text: str) -> list[int]:
    """'0,2-5' -> [0, 2, 3, 4, 5]. Raises ValueError on malformed text."""
    return sorted(set(parse_cpu_list_ordered(text)))


def parse_cpu_list_ordered(text: str) -> list[int]:
    """'4,0-1' -> [4, 0, 1]: the CPUs in the order written, repeats refused (ValueError)."""
    out = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            raise ValueError(f"empty entry in CPU list {text!r}")
        if "-" in part:
            lo, hi = part.split("-", 1)
            lo, hi = int(lo), int(hi)
            if lo > hi or lo < 0:
                raise ValueError(f"bad CPU range {part!r}")
            out.extend(range(lo, hi + 1))
        else:
            c = int(part)
            if c < 0:
                raise ValueError(f"bad CPU number {part!r}")
            out.append(c)
    if len(set(out)) != len(out):
        raise ValueError(f"CPU list {text!r} names a CPU twice")
    return out


def parse_cpu_mask(text: str) -> list[int]:
    """A kernel cpumask '00000000,000000f0' (32-bit words, most significant first) -> [4, 5, 6, 7]."""
    bits = int(text.replace(",", "").strip() or "0", 16)
    return [i for i in range(bits.bit_length()) if bits >> i & 1]


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


def _set(tree: Tree, base: str, names: tuple[str, ...]) -> list[int] | None:
    """The first of ``names`` under ``base`` that reads: '*_list' files as lists, others as masks."""
    for name in names:
        text = tree.text(f"{base}/{name}")
        if text is None:
            continue
        try:
            return parse_cpu_list(text) if name.endswith("list") else parse_cpu_mask(text)
        except ValueError:
            continue
    return None


def _int(tree: Tree, rel: str) -> int | None:
    text = tree.text(rel)
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


# --- the topology --------------------------------------------------------------------

@dataclass(frozen=True)
class Cpu:
    cpu: int              # the kernel's CPU number
    core: int             # machine-wide core index (cores numbered in order of their lowest CPU)
    core_id: int | None   # sysfs core_id: a label, unique only within a package (hwloc's Core P#)
    package: int          # physical_package_id, or the package's index when the kernel says -1
    node: int             # NUMA node (0 when the kernel has no node directory)
    siblings: tuple       # the core's online hardware threads, this one included


@dataclass(frozen=True)
class Topology:
    cpus: dict                          # online CPU -> Cpu
    nodes: tuple                        # NUMA node numbers (sparse numbering kept)
    distances: dict | None              # node -> {node: distance}; None when the kernel gives none
    offline: tuple                      # CPUs present but offline
    allowed: tuple                      # CPUs a run may use (online, cpuset, Cpus_allowed)
    allowed_mems: tuple                 # memory nodes a run may use
    restricted_by: tuple = ()           # what narrowed ``allowed``: "cpuset /path", "Cpus_allowed_list"
    root: str = "/"
    core_of: dict = field(default_factory=dict)   # CPU -> core index (the older interface)

    @property
    def online(self) -> tuple:
        return tuple(sorted(self.cpus))

    @property
    def physical_cores(self) -> int:
        return len({c.core for c in self.cpus.values()})

    @property
    def packages(self) -> tuple:
        return tuple(sorted({c.package for c in self.cpus.values()}))

    @property
    def smt(self) -> int:
        """Hardware threads per core (the most any core has online)."""
        return max((len(c.siblings) for c in self.cpus.values()), default=1)

    def node_cpus(self, node: int) -> list[int]:
        return [c for c in sorted(self.cpus) if self.cpus[c].node == node]

    def physical_in(self, allowed) -> int:
        return len({self.cpus[c].core for c in allowed if c in self.cpus})

    def order(self, allowed) -> list[int]:
        """The compact order of ``allowed`` (kept for the older interface)."""
        return placement_order(self, allowed, "compact")

    def relation(self, a: int, b: int) -> str:
        """How CPUs ``a`` and ``b`` share hardware: one of RELATIONS."""
        ca, cb = self.cpus[a], self.cpus[b]
        if a == b:
            return "self"
        if ca.core == cb.core:
            return "smt"
        if ca.package == cb.package:
            return "package"
        if ca.node == cb.node:
            return "node"
        return "remote"

    def pair(self, relation: str, allowed=None) -> tuple[int, int] | None:
        """The first two CPUs of ``allowed`` (default: the allowed CPUs) in ``relation``, or None."""
        if relation not in RELATIONS:
            raise ValueError(f"unknown relation {relation!r}; one of {', '.join(RELATIONS)}")
        cpus = sorted(self.allowed if allowed is None else allowed)
        for i, a in enumerate(cpus):
            for b in cpus[i + (relation != "self"):]:
                if self.relation(a, b) == relation:
                    return a, b
        return None

    def distance(self, a: int, b: int) -> int | None:
        return None if self.distances is None else self.distances.get(a, {}).get(b)

    def summary(self) -> dict:
        """Plain data for results and ``testbed placement --json``."""
        return {
            "root": self.root,
            "packages": len(self.packages),
            "nodes": list(self.nodes),
            "distances": None if self.distances is None else
            {str(a): [self.distances[a].get(b) for b in self.nodes] for a in self.nodes},
            "physical_cores": self.physical_cores,
            "logical_cpus": len(self.cpus),
            "threads_per_core": self.smt,
            "offline": format_cpu_list(self.offline),
            "allowed": format_cpu_list(self.allowed),
            "allowed_mems": format_cpu_list(self.allowed_mems),
            "restricted_by": list(self.restricted_by),
            "node_cpus": {str(n): format_cpu_list(self.node_cpus(n)) for n in self.nodes},
        }


SYS_CPU = "sys/devices/system/cpu"
SYS_NODE = "sys/devices/system/node"


def read_topology(root: str | None = None) -> Topology:
    """The topology of the host under ``root`` (default: TESTBED_FSROOT, else "/")."""
    tree = Tree(root)
    if not os.path.isdir(tree.path(SYS_CPU)):
        where = f"TESTBED_FSROOT={tree.root}" if not tree.live else "this host"
        raise UsageError(f"{where} holds no {SYS_CPU}; point TESTBED_FSROOT at a directory with sys/ and proc/ "
                         "as a host's root has them (e.g. an extracted hwloc-gather-topology tarball)")
    present = sorted(int(d[3:]) for d in tree.listdir(SYS_CPU) if d.startswith("cpu") and d[3:].isdigit())
    online_text = tree.text(f"{SYS_CPU}/online")
    if online_text:
        online = set(parse_cpu_list(online_text))
    else:                                    # no cpu/online: each CPU's own online file (absent: online)
        online = {c for c in present if tree.text(f"{SYS_CPU}/cpu{c}/online") in (None, "1")}
    if not present:
        present = sorted(online)
    listed = tree.text(f"{SYS_CPU}/offline")
    try:
        present = sorted(set(present) | set(parse_cpu_list(listed) if listed else []))
    except ValueError:
        pass
    offline = tuple(c for c in present if c not in online)

    threads, pkg_sets, core_ids, pkg_ids = {}, {}, {}, {}
    for c in sorted(online):
        base = f"{SYS_CPU}/cpu{c}/topology"
        sib = _set(tree, base, ("core_cpus_list", "thread_siblings_list", "core_cpus", "thread_siblings")) or [c]
        pkg = _set(tree, base, ("package_cpus_list", "core_siblings_list", "package_cpus", "core_siblings")) or [c]
        threads[c] = tuple(x for x in sib if x in online) or (c,)
        pkg_sets[c] = frozenset(x for x in pkg if x in online) | {c}
        core_ids[c] = _int(tree, f"{base}/core_id")
        pkg_ids[c] = _int(tree, f"{base}/physical_package_id")

    if _amd_compute_units(tree):
        # hwloc's is_amd_with_CU quirk: Bulldozer-family kernels list a compute unit's two cores
        # as thread siblings, with a core_id each; hwloc then makes every thread a core of its own.
        for c in sorted(online):
            others = [x for x in threads[c] if x != c]
            if others and core_ids.get(others[0]) != core_ids[c]:
                threads[c] = (c,)
    core_index = {}
    for c in sorted(online):
        core_index.setdefault(threads[c], len(core_index))
    package_of, seen_pkgs = {}, {}
    for c in sorted(online):
        group = pkg_sets[c]
        if group not in seen_pkgs:
            pid = pkg_ids[c]
            seen_pkgs[group] = pid if pid is not None and pid >= 0 else len(seen_pkgs)
        package_of[c] = seen_pkgs[group]

    nodes = sorted(int(d[4:]) for d in tree.listdir(SYS_NODE) if d.startswith("node") and d[4:].isdigit())
    node_of, distances = {}, None
    if nodes:
        rows = {}
        for n in nodes:
            for c in _set(tree, f"{SYS_NODE}/node{n}", ("cpulist", "cpumap")) or []:
                node_of[c] = n
            text = tree.text(f"{SYS_NODE}/node{n}/distance")
            try:
                row = [int(x) for x in text.split()] if text else []
            except ValueError:
                row = []
            if len(row) == len(nodes):
                rows[n] = dict(zip(nodes, row))
        distances = rows if len(rows) == len(nodes) else None
    else:
        nodes = [0]
    cpus = {c: Cpu(c, core_index[threads[c]], core_ids[c], package_of[c], node_of.get(c, nodes[0]), threads[c])
            for c in sorted(online)}

    allowed, mems, why = _allowed(tree, set(online), set(nodes))
    return Topology(cpus=cpus, nodes=tuple(nodes), distances=distances, offline=offline, allowed=tuple(allowed),
                    allowed_mems=tuple(mems), restricted_by=tuple(why), root=tree.root,
                    core_of={c: cpus[c].core for c in cpus})


def cpuinfo_first(tree: Tree) -> dict:
    """The first processor's fields of the tree's /proc/cpuinfo (key -> value)."""
    out = {}
    for line in (tree.text("proc/cpuinfo") or "").splitlines():
        if not line.strip():
            if out:
                break
            continue
        key, _, value = line.partition(":")
        out.setdefault(key.strip(), value.strip())
    return out


def _amd_compute_units(tree: Tree) -> bool:
    """AMD family 21 or 22 (Bulldozer to Jaguar): hwloc/topology-linux.c sets is_amd_with_CU for these."""
    info = cpuinfo_first(tree)
    return info.get("vendor_id") == "AuthenticAMD" and info.get("cpu family") in ("21", "22")


def _status_list(tree: Tree, key: str) -> list[int] | None:
    text = tree.text("proc/self/status")
    for line in (text or "").splitlines():
        if line.startswith(key + ":"):
            try:
                return parse_cpu_list(line.split(":", 1)[1].strip())
            except ValueError:
                return None
    return None


def cgroup_cpuset(tree: Tree) -> tuple[str, list[int] | None, list[int] | None] | None:
    """(cgroup path, CPUs, memory nodes) of the tree's own cpuset cgroup, or None if it has none.

    The path is ``proc/self/cpuset`` (v1 and v2 alike), else the cpuset (v1) or unified (v2)
    line of ``proc/self/cgroup``; the files are found under the mounts ``proc/mounts`` lists, as
    hwloc's ``hwloc_find_linux_cgroup_mntpnt`` finds them.
    """
    path = tree.text("proc/self/cpuset")
    if not path:
        for line in (tree.text("proc/self/cgroup") or "").splitlines():
            parts = line.split(":", 2)
            if len(parts) == 3 and ("cpuset" in parts[1].split(",") or parts[1] == ""):
                path = parts[2]
                if parts[1]:
                    break
    if not path:
        return None
    candidates = []
    for line in (tree.text("proc/mounts") or "").splitlines():
        f = line.split()
        if len(f) < 4:
            continue
        mnt, kind, opts = f[1], f[2], f[3].split(",")
        if kind == "cgroup2":
            candidates.append((mnt, ("cpuset.cpus.effective",), ("cpuset.mems.effective",)))
        elif kind == "cgroup" and "cpuset" in opts:
            candidates.append((mnt, ("cpuset.effective_cpus", "cpuset.cpus"), ("cpuset.effective_mems", "cpuset.mems")))
        elif kind == "cpuset":
            candidates.append((mnt, ("effective_cpus", "cpus"), ("effective_mems", "mems")))
    for mnt, cpu_files, mem_files in candidates:
        base = os.path.join(mnt, path.lstrip("/"))
        cpus = _first_list(tree, base, cpu_files)
        if cpus is not None:
            return path, cpus, _first_list(tree, base, mem_files)
    return None


def _first_list(tree: Tree, base: str, names) -> list[int] | None:
    for name in names:
        text = tree.text(f"{base}/{name}")
        if text:
            try:
                return parse_cpu_list(text)
            except ValueError:
                return None
    return None


def _allowed(tree: Tree, online: set, nodes: set) -> tuple[list[int], list[int], list[str]]:
    """The CPUs and memory nodes a run may use, and what narrowed them."""
    why = []
    if tree.live:
        cpus = set(os.sched_getaffinity(0)) & online
        if cpus != online:
            why.append("affinity")
        mems = _status_list(tree, "Mems_allowed_list")
        mems = (set(mems) & nodes or nodes) if mems is not None else nodes
        return sorted(cpus), sorted(mems), why
    cpus, mems = set(online), set(nodes)
    found = cgroup_cpuset(tree)
    if found is not None:
        path, cg_cpus, cg_mems = found
        if cg_cpus is not None and not online <= set(cg_cpus):
            cpus &= set(cg_cpus)
            why.append(f"cpuset {path}")
        if cg_mems is not None and not nodes <= set(cg_mems):
            mems &= set(cg_mems)
            if f"cpuset {path}" not in why:
                why.append(f"cpuset {path}")
    status = _status_list(tree, "Cpus_allowed_list")
    if status is not None and not cpus <= set(status):
        cpus &= set(status)
        why.append("Cpus_allowed_list")
    status = _status_list(tree, "Mems_allowed_list")
    if status is not None:
        mems &= set(status)
    return sorted(cpus), sorted(mems), why


_CACHE: dict = {}


def host_topology() -> Topology:
    """The topology of the host (or of the TESTBED_FSROOT tree), read once per root."""
    key = (fsroot() or "/", os.getpid())
    if key not in _CACHE:
        _CACHE[key] = read_topology(key[0])
    return _CACHE[key]


def require_live_host(what: str = "run") -> None:
    """Refuse to start vCPUs when the topology is read from a snapshot (TESTBED_FSROOT)."""
    if fsroot():
        raise UsageError(f"TESTBED_FSROOT={fsroot()} describes another machine: '{what}' cannot run vCPUs on it; "
                         "unset TESTBED_FSROOT to run here, or use 'testbed placement' to see where vCPUs would go")


# --- placement -----------------------------------------------------------------------

def allowed_cpus(topo: Topology, cpus_arg: str | None, ordered: bool = False) -> list[int]:
    """The host CPUs this run may use: --cpus (in the order written with ``ordered``), within
    what the host allows (this process's affinity, or the TESTBED_FSROOT tree's cpuset)."""
    allowed = set(topo.allowed)
    if cpus_arg is None:
        return sorted(allowed)
    try:
        wanted = parse_cpu_list_ordered(cpus_arg)
    except ValueError as e:
        raise UsageError(f"--cpus {cpus_arg!r} is not a CPU list ({e}); write it like 0,2-5") from None
    missing = [c for c in wanted if c not in topo.cpus]
    if missing:
        state = "offline" if missing[0] in topo.offline else "absent"
        raise UsageError(f"--cpus names CPU {missing[0]}, which this host does not have online ({state}; "
                         f"online: {format_cpu_list(topo.online)})")
    barred = [c for c in wanted if c not in allowed]
    if barred:
        how = f" by {', '.join(topo.restricted_by)}" if topo.restricted_by else ""
        raise UsageError(
            f"--cpus names CPU {barred[0]}, which this process may not run on (allowed{how}: "
            f"{format_cpu_list(sorted(allowed))}); pick CPUs from that list"
        )
    return wanted if ordered else sorted(wanted)


def placement_order(topo: Topology, allowed, placement: str) -> list[int]:
    """Every CPU of ``allowed`` in the order vCPUs take them under ``placement``."""
    if placement == "given":
        return list(allowed)
    if placement not in PLACEMENTS:
        raise UsageError(f"--placement {placement!r}: unknown placement; choose one of: {', '.join(PLACEMENTS)}")
    allowed = [c for c in sorted(allowed) if c in topo.cpus]
    # A core's threads in CPU order: the first takes a vCPU in the first pass, the others in later ones.
    by_core: dict[int, list[int]] = {}
    for c in allowed:
        by_core.setdefault(topo.cpus[c].core, []).append(c)
    passes = max((len(t) for t in by_core.values()), default=0)
    nodes = sorted({topo.cpus[c].node for c in allowed})
    out = []
    for k in range(passes):
        per_node = []
        for n in nodes:
            cores = [t for t in by_core.values() if topo.cpus[t[0]].node == n and len(t) > k]
            if placement == "compact":
                cores.sort(key=lambda t: (topo.cpus[t[0]].package, t[0]))
            else:                            # a node's packages dealt round-robin too
                rank: dict = {}
                keyed = []
                for t in sorted(cores, key=lambda t: t[0]):
                    p = topo.cpus[t[0]].package
                    keyed.append(((rank.get(p, 0), p), t))
                    rank[p] = rank.get(p, 0) + 1
                cores = [t for _, t in sorted(keyed)]
            per_node.append([t[k] for t in cores])
        if placement == "compact":
            out += [c for lst in per_node for c in lst]
        else:
            for i in range(max((len(lst) for lst in per_node), default=0)):
                out += [lst[i] for lst in per_node if i < len(lst)]
    return out


def place(topo: Topology, allowed: list[int], vcpus: int, oversubscribe: bool,
          placement: str = DEFAULT_PLACEMENT) -> list[int]:
    """The host CPU for each vCPU, or a UsageError saying why it cannot be done."""
    order = placement_order(topo, allowed, placement)
    if not order:
        raise UsageError("no CPU is allowed for the vCPUs; check --cpus and the cgroup cpuset")
    if vcpus > len(order) and not oversubscribe:
        raise UsageError(
            f"--vcpus {vcpus} needs {vcpus} CPUs, but only {len(order)} are allowed "
            f"({format_cpu_list(order)}); pass --oversubscribe to share CPUs, or lower --vcpus"
        )
    return [order[i % len(order)] for i in range(vcpus)]


def check_placement(placement: str, cpus_arg: str | None) -> None:
    if placement not in PLACEMENTS:
        raise UsageError(f"--placement {placement!r}: unknown placement; choose one of: {', '.join(PLACEMENTS)}")
    if placement == "given" and cpus_arg is None:
        raise UsageError("--placement given takes the CPUs from --cpus, in the order written; add --cpus, e.g. "
                         "--cpus 0,4,1,5")


def placement_rows(topo: Topology, cores: list[int]) -> list[dict]:
    """Where each vCPU runs: {"vcpu", "cpu", "core", "package", "node"} (core: machine-wide index)."""
    out = []
    for v, c in enumerate(cores):
        info = topo.cpus.get(c)
        out.append({"vcpu": v, "cpu": int(c), "core": None if info is None else info.core,
                    "package": None if info is None else info.package, "node": None if info is None else info.node})
    return out
