"""Where the arena's memory lives on a NUMA host, asked for and read back.

The arena is one shared segment (tmpfs). A page of it is allocated when first
touched, on the node the memory policy of its range says: for shared memory
that policy belongs to the segment itself (``mbind`` on a shared mapping sets
the object's shared policy, see mbind(2)), whoever touches the page first.
So the parent, before it initialises anything, binds:

- each vCPU's private rows (its row of every per-vCPU array, and the pages of
  its per-vCPU mapcache PTEs) to the node of the CPU the vCPU is placed on;
- the domain's shared lines (the design's domain words: lock, cursor, epoch,
  TLB clock; its shared bitmaps; the run queue and control words) to
  ``--numa-home`` (default: vCPU 0's node);
- the machine frames interleaved across the allowed nodes, or to the home
  node (``--frames-numa``).

When the placement spans two nodes or more, the layout puts every array and
every per-vCPU row on a page of its own (``runplan.build_layout``), so a page
never holds two vCPUs' rows. The PTE array is one flat array indexed by slot:
a page of it holding several vCPUs' slots goes to the node of its first
slot's vCPU. TODO: per-vCPU PTE pages, which needs the kernels' slot index to
skip the padding.

What the result records is read back after the run, page by page, with
``move_pages(2)`` (the query form: no node given, the status says the node),
never copied from the request; without libnuma it is read from
``/proc/self/numa_maps`` (``parse_numa_maps``), per mapping only.

The binding is libnuma's (``numa_tonode_memory``, ``numa_interleave_memory``,
``numa_move_pages``) through ctypes: libnuma is the kernel's own NUMA library
(numactl), on every distribution, where a Python binding would be one more
package with no more in it. Without libnuma (or on a kernel without NUMA),
nothing is bound, and the result says so.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import re
from collections import Counter

import numpy as np

from .errors import UsageError

PAGE = 4096
DOMAIN_FIELDS = ("ctl", "runq", "dom", "dbits")
PTE_FIELD = "pte"
FRAMES_FIELD = "frames"


@functools.lru_cache(maxsize=1)
def libnuma():
    """libnuma through ctypes, or None when it is missing or the kernel has no NUMA support."""
    name = ctypes.util.find_library("numa") or "libnuma.so.1"
    try:
        lib = ctypes.CDLL(name, use_errno=True)
    except OSError:
        return None
    lib.numa_available.restype = ctypes.c_int
    if lib.numa_available() < 0:
        return None
    lib.numa_tonode_memory.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    lib.numa_tonode_memory.restype = None
    lib.numa_parse_nodestring.argtypes = [ctypes.c_char_p]
    lib.numa_parse_nodestring.restype = ctypes.c_void_p
    lib.numa_interleave_memory.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    lib.numa_interleave_memory.restype = None
    lib.numa_bitmask_free.argtypes = [ctypes.c_void_p]
    lib.numa_bitmask_free.restype = None
    lib.numa_move_pages.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.POINTER(ctypes.c_void_p),
                                    ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_int), ctypes.c_int]
    lib.numa_move_pages.restype = ctypes.c_long
    return lib


def check_home(topo, home: int | None) -> None:
    if home is not None and home not in topo.nodes:
        raise UsageError(f"--numa-home {home}: this host has no NUMA node {home} (nodes: "
                         f"{', '.join(map(str, topo.nodes))}); pick one of those")
    if home is not None and home not in topo.allowed_mems:
        raise UsageError(f"--numa-home {home}: this process may not allocate on node {home} (allowed: "
                         f"{', '.join(map(str, topo.allowed_mems))}); pick one of those")


def nearest_mem(topo, node: int) -> int:
    """``node`` if its memory is allowed, else the allowed memory node nearest it (kernel distances)."""
    mems = list(topo.allowed_mems) or list(topo.nodes)
    if node in mems:
        return node
    return min(mems, key=lambda m: (topo.distance(node, m) if topo.distance(node, m) is not None else 1 << 30, m))


def default_home(topo, cores: list[int]) -> int:
    """--numa-home's default: vCPU 0's node (the nearest allowed one if its memory is barred)."""
    first = topo.cpus[cores[0]].node if cores and cores[0] in topo.cpus else topo.nodes[0]
    return nearest_mem(topo, first)


def spans_nodes(topo) -> bool:
    """True when memory placement can matter: two or more memory nodes allowed."""
    return len(topo.allowed_mems) > 1


def _pages(start: int, end: int) -> range:
    """Page addresses of [start, end): every page the range touches."""
    return range(start - start % PAGE, end, PAGE)


class Plan:
    """What to bind where: a list of (region name, [(address, bytes)], node or "interleave")."""

    def __init__(self, cfg, topo, cores: list[int]):
        self.nodes = [nearest_mem(topo, topo.cpus[c].node if c in topo.cpus else topo.nodes[0]) for c in cores]
        self.home = cfg.numa_home if cfg.numa_home is not None else default_home(topo, cores)
        self.frames_numa = cfg.frames_numa
        self.allowed_mems = list(topo.allowed_mems)
        self.one_node = len(self.allowed_mems) <= 1
        self.regions: list[tuple[str, list[tuple[int, int]], object]] = []

    def build(self, views: dict, layout, entries: int) -> "Plan":
        per_vcpu = [f.name for f in layout.fields if f.per_vcpu]
        dom = [(views[n].ctypes.data, views[n].nbytes) for n in DOMAIN_FIELDS if n in views and views[n].nbytes]
        self.regions.append(("domain", dom, self.home))
        for v, node in enumerate(self.nodes):
            spans = [(views[n][v].ctypes.data, views[n][v].nbytes) for n in per_vcpu if views[n].nbytes]
            self.regions.append((f"vcpu{v}", spans, node))
        pte = views.get(PTE_FIELD)
        if pte is not None and pte.nbytes and self.nodes:
            base = pte.ctypes.data
            for page in _pages(base, base + pte.nbytes):
                first = max(page, base)
                owner = min((first - base) // 8 // max(entries, 1), len(self.nodes) - 1)
                self.regions.append((f"pte{owner}", [(first, min(page + PAGE, base + pte.nbytes) - first)],
                                     self.nodes[owner]))
        fr = views[FRAMES_FIELD]
        self.regions.append(("frames", [(fr.ctypes.data, fr.nbytes)],
                             "interleave" if self.frames_numa == "interleave" else self.home))
        return self

    def apply(self) -> str:
        """Bind every region; what was done, in a word: "bound", "one node", or why not."""
        if self.one_node:
            return "one node"
        lib = libnuma()
        if lib is None:
            return "libnuma unavailable"
        mask = lib.numa_parse_nodestring(",".join(map(str, self.allowed_mems)).encode())
        try:
            for _, spans, node in self.regions:
                for addr, size in spans:
                    start, end = addr - addr % PAGE, addr + size
                    if node == "interleave":
                        lib.numa_interleave_memory(start, end - start, mask)
                    else:
                        lib.numa_tonode_memory(start, end - start, int(node))
        finally:
            if mask:
                lib.numa_bitmask_free(mask)
        return "bound"


def page_nodes(addresses: list[int]) -> list[int] | None:
    """The node of each page (move_pages' query form); a negative errno for a page not present;
    None without libnuma."""
    lib = libnuma()
    if lib is None or not addresses:
        return None
    n = len(addresses)
    pages = (ctypes.c_void_p * n)(*addresses)
    status = (ctypes.c_int * n)()
    if lib.numa_move_pages(0, n, pages, None, status, 0) < 0:
        return None
    return list(status)


def read_back(plan: Plan, touch) -> dict:
    """Where each region's pages are, read from the kernel: {"domain": {...}, "frames": {...},
    "vcpus": [{"vcpu", "requested", "pages"}], ...}. ``touch(address)`` maps a page into this
    process (a read), so that move_pages sees pages only the vCPUs touched."""
    out = {"requested": {"home": plan.home, "frames": plan.frames_numa, "vcpu_nodes": plan.nodes},
           "allowed_mems": plan.allowed_mems, "source": "move_pages", "vcpus": [], "pte": {}}
    by_region: dict[str, tuple[list[int], object]] = {}
    for name, spans, node in plan.regions:
        pages = by_region.setdefault(name, ([], node))[0]
        for addr, size in spans:
            pages.extend(_pages(addr, addr + size))
    for name, (pages, node) in by_region.items():
        for page in pages:
            touch(page)
        found = page_nodes(pages)
        counts = Counter("absent" if s < 0 else str(s) for s in found) if found is not None else None
        entry = {"requested": node, "pages": None if counts is None else dict(sorted(counts.items()))}
        if name.startswith("vcpu"):
            out["vcpus"].append({"vcpu": int(name[4:]), **entry})
        elif name.startswith("pte"):
            agg = out["pte"].setdefault("pages", Counter())
            if counts is not None:
                agg.update(counts)
        else:
            out[name] = entry
    if "pages" in out["pte"]:
        out["pte"] = {"pages": dict(sorted(out["pte"]["pages"].items()))}
    if libnuma() is None:
        out["source"] = "numa_maps"
        out["numa_maps"] = own_numa_maps()
    out["misplaced"] = misplaced(out)
    return out


def misplaced(back: dict) -> list[str]:
    """Regions with pages off the node asked for (interleaved frames: off the allowed nodes)."""
    bad = []
    regions = [("domain", back.get("domain")), ("frames", back.get("frames"))]
    regions += [(f"vCPU {v['vcpu']}", v) for v in back.get("vcpus", [])]
    for name, entry in regions:
        if not entry or not entry.get("pages"):
            continue
        want = entry["requested"]
        ok = ({str(n) for n in back["allowed_mems"]} if want == "interleave" else {str(want)}) | {"absent"}
        if set(entry["pages"]) - ok:
            bad.append(name)
    return bad


_NUMA_MAPS_NODE = re.compile(r"\bN(\d+)=(\d+)")


def parse_numa_maps(text: str) -> list[dict]:
    """/proc/PID/numa_maps: per mapping, its address, policy, file and pages per node.

    A line is ``7f..000 interleave:0-1 file=/dev/shm/x dirty=4 N0=2 N1=2 kernelpagesize_kB=4``
    (proc(5)); "pages" maps node to the count of N<node>=<count>.
    """
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 2:
            continue
        try:
            addr = int(parts[0], 16)
        except ValueError:
            continue
        fields = dict(p.split("=", 1) for p in parts[2:] if "=" in p)
        out.append({"address": addr, "policy": parts[1], "file": fields.get("file"),
                    "pages": {int(n): int(c) for n, c in _NUMA_MAPS_NODE.findall(line)},
                    "page_kib": int(fields["kernelpagesize_kB"]) if "kernelpagesize_kB" in fields else None})
    return out


def own_numa_maps(prefix: str = "/dev/shm/testbed") -> list[dict]:
    """This process's numa_maps entries for the testbed's segments (the fallback read-back)."""
    try:
        with open("/proc/self/numa_maps") as f:
            text = f.read()
    except OSError:
        return []
    return [m for m in parse_numa_maps(text) if (m["file"] or "").startswith(prefix)]


def touch_reader(views: dict):
    """A page toucher over the arena: reads one byte of the page holding an address."""
    spans = sorted((v.ctypes.data, v.nbytes, v) for v in views.values() if v.nbytes)

    def touch(addr: int) -> None:
        for base, size, arr in spans:
            if base - base % PAGE <= addr < base + size:
                raw = arr.reshape(-1).view(np.uint8)
                raw[max(addr - base, 0)]          # a read faults the page into this process
                return

    return touch


def describe(back: dict | None) -> str:
    """One line for the run's output: where the memory ended up."""
    if not back:
        return "memory: not placed"
    note = f"memory: {back['note']}\n" if back.get("note") else ""

    def nodes(entry):
        pages = (entry or {}).get("pages") or {}
        return ",".join(f"node {n}: {c}" for n, c in pages.items() if n != "absent") or "unknown"

    vnodes = Counter()
    for v in back.get("vcpus", []):
        for n, c in (v.get("pages") or {}).items():
            if n != "absent":
                vnodes[n] += c
    mis = back.get("misplaced") or []
    return note + (f"memory (read back, {back['source']}): domain lines on {nodes(back.get('domain'))} pages; frames ({back['requested']['frames']}) on "
            f"{nodes(back.get('frames'))}; vCPU rows on " + (", ".join(f"node {n}: {c}" for n, c in sorted(vnodes.items()))
                                                             or "unknown")
            + (f"; off their node: {', '.join(mis)}" if mis else ""))
