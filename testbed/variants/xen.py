"""xen: a Xen tree's own ``domain_page.c`` (plus patches), run as the design.

Not a transcription: ``testbed.xen`` copies the file out of the user's tree, applies their
patches, and compiles it against the shim (``csrc/xen/shim.h``) into the C port's loop
(``csrc/testbed_op.c``), so the vCPU processes run the port's operation loop, oracle, TLB and
interrupts with the tree's ``map_domain_page`` and ``unmap_domain_page`` in place of a
transcription's. The file is a debug build (no ``NDEBUG``): every map goes through the
mapcache, none through the directmap shortcut (``perfc map_domain_page_count`` equals the
maps, checked), and a failed ``ASSERT`` or ``BUG_ON`` ends the run FAILURE, naming its line.

State: the domain words hold, after the testbed's own eight (word 0 the TLB clock), the
shim's heap: Xen's ``struct domain``, its ``struct vcpu``s, the pool ``xzalloc`` draws from and
the per-domain window the old design keeps its bitmaps in (``csrc/xen/glue.c``). The parent
lays it out and runs the tree's ``mapcache_domain_init`` / ``mapcache_vcpu_init`` before it
forks, so the vCPUs inherit Xen's pointers into it at the same address.

Geometry comes from the tree, not the command line: ``--entries`` is its
``MAPCACHE_VCPU_ENTRIES`` and ``--hash`` its ``MAPHASH_ENTRIES`` (a patch to ``config.h`` or
``domain.h`` changes them).

The invariant check: when the tree's structs have the shape of a design the testbed has
transcribed (the old design: ``mapcache_domain`` with ``inuse`` and ``garbage``; the seed's:
``mapcache_vcpu`` with ``refcnt`` and ``inuse``), the Xen state is read into that
transcription's layout (``as_transcription``) and checked by its ``check``, so the real code is
held to the same invariants (slot leaks included); the differential test
(tests/test_xen.py) compares the two states word for word. Another shape gets the checks that
need no knowledge of the design (the PTE of every live mapping maps its MFN).
TODO: a shape the testbed has not transcribed gets no slot-leak check.
"""

from __future__ import annotations

import ctypes
import dataclasses

import numpy as np

from .. import abi, tlb
from ..errors import UsageError
from .contract import domain_vcpus

NAME = "xen"
DESCRIPTION = "a Xen tree's own domain_page.c, patched (--xen-tree DIR [--xen-patch FILE]...), compiled against the shim"
DEFAULT_ENTRIES = 16        # resolve() replaces it with the tree's MAPCACHE_VCPU_ENTRIES
MAX_ENTRIES = 1 << 16
GEOMETRY = {
    "entries": "the tree's own headers, parsed at build time: MAPCACHE_VCPU_ENTRIES (testbed/xen.py)",
    "hash": "the tree's own headers, parsed at build time: MAPHASH_ENTRIES (testbed/xen.py)",
    "pool": "the tree's own domain_page.c: mapcache_domain_init / mapcache_vcpu_init, run as they are",
}
NATIVE = True               # runs the C loop: no numba map_page / unmap_page
VID = 64                    # p[P_VARIANT]; its entry in the C port's generated table (native.py)
IRQS_OFF = ("map", "unmap")  # the files tried run both under local_irq_save
HEAP_WORD = 8               # the shim's heap starts after the testbed's own domain words

# csrc/xen/shim.h writes abi's S_XEN_* counters (S_ 88..103: Xen's own code) and ST_XEN_BUG
S_XEN_MAPS, S_XEN_BUGS, S_XEN_BUG_LINE, S_XEN_BUG_KIND = abi.S_XEN_MAPS, abi.S_XEN_BUGS, abi.S_XEN_BUG_LINE, \
    abi.S_XEN_BUG_KIND
S_XEN_DIRECT, ST_XEN_BUG = abi.S_XEN_DIRECT, abi.ST_XEN_BUG
BUG_KINDS = {1: "ASSERT", 2: "BUG_ON", 3: "BUG", 4: "BUILD_BUG_ON"}


def spec(text: str) -> tuple[str, tuple[str, ...]]:
    """``xen:TREE[+PATCH]...`` -> (tree, patches)."""
    body = text[len("xen:"):] if text.startswith("xen:") else ""
    parts = body.split("+")
    if not parts[0]:
        raise UsageError(f"{text!r}: write xen:TREE or xen:TREE+PATCH[+PATCH...], e.g. xen:~/xen+mine.patch")
    return parts[0], tuple(p for p in parts[1:] if p)


def build_of(cfg):
    """The build of a config's tree and patches (cached); UsageError if it has none or it fails."""
    from .. import xen

    if not cfg.xen_tree:
        raise UsageError("--variant xen needs --xen-tree DIR (a Xen checkout), optionally --xen-patch FILE")
    return xen.build(cfg.xen_tree, cfg.xen_patches)


def resolve(cfg):
    """The tree's geometry: MAPCACHE_VCPU_ENTRIES and MAPHASH_ENTRIES."""
    b = build_of(cfg)
    return dataclasses.replace(cfg, entries=b.consts["MAPCACHE_VCPU_ENTRIES"],
                               hash_entries=b.consts["MAPHASH_ENTRIES"])


def validate(cfg):
    """A trial init in private memory: a failing mapcache_domain_init / mapcache_vcpu_init (an
    ASSERT, an allocation) is bad input, found before anything starts. A failed BUILD_BUG_ON is
    said once on stderr (Xen's build would stop there) and recorded with the result."""
    import sys

    from ..config import params
    from ..harness import private_state

    b = build_of(cfg)
    private_state(cfg, params(cfg))
    for line in b.build_bugs:
        if (b.key, line) not in _SAID:
            _SAID.add((b.key, line))
            print(f"testbed: note: {b.label}: {line} fails; Xen's build would stop there, the testbed runs "
                  "the file anyway", file=sys.stderr)


_SAID: set = set()


def label(cfg) -> str:
    return build_of(cfg).label


def describe(cfg) -> dict:
    """The code a run ran: the tree, its commit, the hash of every file read and of each patch."""
    return build_of(cfg).record()


def state_shape(cfg):
    heap = int(build_of(cfg).lib.testbed_xen_heap_bytes(domain_vcpus(cfg)))
    return HEAP_WORD + (heap + 7) // 8, 0, abi.V_RESERVED


def _addr(a: np.ndarray) -> int:
    return a.ctypes.data


def init_state(views, cfg):
    b = build_of(cfg)
    dom = views["dom"]
    heap = dom[HEAP_WORD:]
    rc = int(b.lib.testbed_xen_init(_addr(heap), heap.nbytes, domain_vcpus(cfg), cfg.entries, None, _addr(dom),
                                    _addr(views["pte"]), _addr(views["vst"][0]), _addr(views["stats"][0])))
    srow = views["stats"][0]
    if rc in (ST_XEN_BUG, abi.ST_EXHAUSTED):
        raise UsageError(f"{b.label}: {bug_message(b, srow)} while the mapcache was set up (init)")
    srow[S_XEN_BUGS] = srow[S_XEN_BUG_LINE] = srow[S_XEN_BUG_KIND] = srow[abi.S_EXHAUSTED] = 0
    lines = (ctypes.c_int64 * 16)()
    n = int(b.lib.testbed_xen_build_bugs(lines, 16))
    b.build_bugs = [f"xen/arch/x86/domain_page.c:{lines[k]}: {b.source_line(lines[k])}" for k in range(min(n, 16))]
    if rc != 0:
        raise UsageError(f"{b.label}: mapcache_vcpu_init / mapcache_domain_init returned {rc} (-errno) for "
                         f"{domain_vcpus(cfg)} vCPUs")


def runner(cfg):
    """loops.run_ops's signature, on the C loop with the tree's file in it."""
    from ..native import Native

    native = Native(lib=build_of(cfg).dir + "/lib.so")

    def run_ops(n, vcpu, *args):
        return native.bind(*args)(n, vcpu)

    run_ops.native = native
    return run_ops


def failure_detail(cfg, row) -> str:
    """What a vCPU's failed ASSERT / BUG_ON was, for the failure message."""
    return bug_message(build_of(cfg), row) if row[S_XEN_BUG_LINE] else ""


def bug_message(b, srow) -> str:
    line = int(srow[S_XEN_BUG_LINE])
    kind = BUG_KINDS.get(int(srow[S_XEN_BUG_KIND]), "assertion")
    why = " (the bitmap search before it found no free slot: exhaustion)" if srow[abi.S_EXHAUSTED] else ""
    return f"{kind} failed at xen/arch/x86/domain_page.c:{line}: {b.source_line(line)}{why}"


# --- reading the Xen state ---------------------------------------------------------------------
def _read(addr: int, nbytes: int) -> bytes:
    return ctypes.string_at(addr, nbytes)


def member(b, struct: str, base: int, name: str) -> np.ndarray:
    """A member of the struct at ``base`` as unsigned integers (a pointer member: its target is not read)."""
    off, size, elem, _ = b.structs[struct][name]
    dt = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}.get(elem)
    if dt is None:
        return np.frombuffer(_read(base + off, size), dtype=np.uint8)
    return np.frombuffer(_read(base + off, size), dtype=dt)


def shape(b) -> str | None:
    """Which transcription the tree's structs have the shape of: 'locked', 'lockless', or None."""
    d, v = b.structs.get("mapcache_domain", {}), b.structs.get("mapcache_vcpu", {})
    if {"inuse", "garbage", "cursor", "epoch", "lock", "tlbflush_timestamp"} <= set(d) and "hash" in v:
        return "locked"
    if {"hash_mfn", "hash_idx", "refcnt", "inuse"} <= set(v):
        return "lockless"
    return None


def _signed(a: np.ndarray, bits: int) -> np.ndarray:
    """Xen's all-ones 'not in use' (~0UL, (u32)~0U) as the transcriptions' -1."""
    a = a.astype(np.uint64)
    return np.where(a == (1 << bits) - 1, -1, a.astype(np.int64)).astype(np.int64)


def as_transcription(views, cfg):
    """(the transcription's name, its config, its views) holding this run's Xen state; None for
    a shape the testbed has not transcribed."""
    from . import get, locked, lockless

    b = build_of(cfg)
    kind = shape(b)
    if kind is None:
        return None
    lib = b.lib
    tcfg = dataclasses.replace(cfg, variant=kind, xen_tree=None, xen_patches=(),
                               lock="ticket" if kind == "locked" else None,
                               dom_layout="xen" if kind == "locked" else None)
    dom_w, bits_w, row_w = get(kind).module.state_shape(tcfg)
    dom = np.zeros(max(dom_w, 8), dtype=np.int64)
    dom[tlb.D_TLBCLOCK] = views["dom"][tlb.D_TLBCLOCK]
    dbits = np.zeros(max(bits_w, 1), dtype=np.int64)
    d = domain_vcpus(cfg)              # Xen's d->max_vcpus: every vCPU's cache, idle ones too
    vst = np.zeros((d, max(row_w, abi.V_RESERVED)), dtype=np.int64)
    vst[:, :abi.V_RESERVED] = views["vst"][:, :abi.V_RESERVED]
    h, e = cfg.hash_entries, cfg.entries
    dbase = int(lib.testbed_xen_dcache())
    if kind == "locked":
        dd = {n: member(b, "mapcache_domain", dbase, n) for n in ("cursor", "epoch", "tlbflush_timestamp")}
        w = locked.dom_words("xen")
        dom[w["cursor"]], dom[w["epoch"]], dom[w["tlbflush_ts"]] = (int(dd[n][0]) for n in dd)
        lock_off = b.structs["mapcache_domain"]["lock"][0]
        dom[w["lock"]] = np.frombuffer(_read(dbase + lock_off, 8), dtype=np.int64)[0]
        slots = d * e
        nw = locked.bitmap_words(slots)
        gb = locked.garbage_base(slots)
        for name, at in (("inuse", 0), ("garbage", gb)):
            ptr = int(member(b, "mapcache_domain", dbase, name)[0])
            dbits[at:at + nw] = np.frombuffer(_read(ptr, 8 * nw), dtype=np.int64)
        ent = b.structs["vcpu_maphash_entry"]
        esize = b.structs["mapcache_vcpu"]["hash"][2]
        for v in range(d):
            vbase = int(lib.testbed_xen_vcache(v))
            vst[v, locked.V_SHADOW_EPOCH] = int(member(b, "mapcache_vcpu", vbase, "shadow_epoch")[0])
            hbase = vbase + b.structs["mapcache_vcpu"]["hash"][0]
            for k in range(h):
                at = hbase + k * esize
                mfn = np.frombuffer(_read(at + ent["mfn"][0], 8), dtype=np.uint64)
                idx = np.frombuffer(_read(at + ent["idx"][0], 4), dtype=np.uint32)
                ref = np.frombuffer(_read(at + ent["refcnt"][0], 4), dtype=np.uint32)
                vst[v, locked.V_HASH + k] = _signed(mfn, 64)[0]
                vst[v, locked.V_HASH + h + k] = _signed(idx, 32)[0]
                vst[v, locked.V_HASH + 2 * h + k] = int(ref[0])
    else:
        hm, hi, rc, iu, _ = lockless._offsets(h, e)
        for v in range(d):
            vbase = int(lib.testbed_xen_vcache(v))
            vst[v, hm:hm + h] = _signed(member(b, "mapcache_vcpu", vbase, "hash_mfn"), 64)[:h]
            vst[v, hi:hi + h] = _signed(member(b, "mapcache_vcpu", vbase, "hash_idx"), 32)[:h]
            vst[v, rc:rc + e] = member(b, "mapcache_vcpu", vbase, "refcnt")[:e].astype(np.int64)
            words = member(b, "mapcache_vcpu", vbase, "inuse").view(np.int64)
            vst[v, iu:iu + len(words)] = words
    tviews = dict(views, dom=dom, dbits=dbits, vst=vst)
    return kind, tcfg, tviews


def check(views, cfg, live_by_vcpu, victims=frozenset()):
    """The transcription's invariants on the Xen state when its shape is known (see the module
    docstring), plus the shim's own: every map went through the mapcache."""
    from . import get

    stats = views["stats"]
    bad = int(stats[:, S_XEN_DIRECT].sum())
    # perfc counts every map the file made, the loop's (S_MAPS) and the interrupt handlers' alike;
    # a vCPU stopped inside a map may have counted one the loop did not finish
    made = int(stats[:, abi.S_MAPS].sum()) + int(stats[:, abi.S_IRQ_MAPS].sum())
    bad += int(abs(int(stats[:, S_XEN_MAPS].sum()) - made) > cfg.vcpus)
    t = as_transcription(views, cfg)
    if t is None:
        present = int(tlb.PTE_PRESENT)
        for v, live in live_by_vcpu.items():
            if v not in victims:
                bad += sum(1 for va, mfn in live if va >= abi.MAPCACHE_VA
                           and views["pte"][va - abi.MAPCACHE_VA] != (mfn | present))
        return {"slot_leaks": 0, "invariant_violations": bad}
    kind, tcfg, tviews = t
    out = get(kind).module.check(tviews, tcfg, live_by_vcpu, victims)
    return dict(out, invariant_violations=out["invariant_violations"] + bad)
