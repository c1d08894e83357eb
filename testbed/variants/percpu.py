"""percpu: the per-vCPU mapcache of Xen's Address Space Isolation series (v2, 2025).

With address space isolation each vCPU runs on page tables of its own, so the
mapcache moves from the domain into the vCPU. What the old design keeps per
domain (the cursor, the ``inuse`` and ``garbage`` bitmaps) becomes per vCPU, and
with it everything that existed only because other vCPUs shared the pool goes
away: no lock (only the owning vCPU ever touches its slots), no epoch and no
TLB-clock check (only the owning vCPU's TLB can cache its slots). What stays is
the old design's answer to TLB flushing: freed slots are not reused before the
cursor wraps, and a wrap reclaims them all with one local flush. This is the
design that answers the seed's reviewers side by side with ``lockless``: one
batched flush per wrap here, one ``invlpg`` per slot reuse there.

Algorithm. Each vCPU owns ``MAPCACHE_VCPU_ENTRIES`` (E, default 16, the
series' own figure; ``--entries 32`` gives it ``lockless``'s pool, so that the
two differ only in how they flush) slots at global indices ``vcpu * E + idx``. Per vCPU, in its own row: a ``cursor``, a hash of
``MAPHASH_ENTRIES`` (H) buckets ``{mfn, idx, refcnt}`` with 32-bit refcounts,
and ``inuse`` and ``garbage`` bitmaps over its E slots.

- map, fast path: the MFN's bucket caches it: bump the refcount.
- map, slow path: take the first free slot at or after the cursor. None: wrap,
  that is, clear every garbage slot's ``inuse`` bit and empty ``garbage``; if
  that freed nothing, evict one of this vCPU's idle hash entries (refcount 0,
  scanning from the MFN's bucket, its PTE cleared); if still none, exhaustion
  (Xen's BUG). A wrap flushes the local TLB once, whatever it reclaimed. Mark
  the slot in use, move the cursor past it, write the PTE.
- unmap: a slot that its bucket caches loses a reference. Otherwise, if the
  bucket is idle, the bucket's old slot goes to garbage and the bucket caches
  this slot instead; if not, this slot goes to garbage. A slot going to
  garbage has its PTE cleared, but stays in use until the next wrap: the local
  TLB may still translate it, and the wrap's flush is what makes it reusable.

Invariants (``check``): a bucket's slot is in use, not garbage, and its PTE
maps the bucket's MFN, and its refcount equals the live mappings through it; a
live mapping's slot is in use and not garbage, and its PTE maps the live MFN;
a garbage slot is in use and its PTE is empty; a slot that is neither in use
nor garbage has an empty PTE; an in-use slot that no live mapping, bucket or
garbage bit explains is a leak. Between wraps, no slot is handed out twice
without a flush in between: the TLB oracle checks that at every access.

Interrupts (``--irq-rate``, testbed/irq.py): map and unmap run under
``local_irq_save``, as in the old design (``irq_save``/``irq_restore``), so an
interrupt at one of their arrival points (``irq_point``) is deferred to the end
of the operation. A handler's mapping takes one of the vCPU's own slots: the
geometry rule counts it.

Simplifications: the 32-bit refcount is an int64 checked against 2**32 (a
wrap is a refcount error); the vCPU's state is one row of the shared arena,
written by this vCPU only, with plain stores (laid out by ownership,
docs/variants.md); the PTE write is a release store, read by this vCPU's TLB only.
The series also maps the vCPU's mapcache page tables per vCPU, which the
testbed's flat page table already does.

Negative controls: ``percpu-noflush`` (``FAULT_NO_FLUSH``) skips the flush at
a wrap, so a reclaimed slot is reused while the TLB still translates it to its
old frame; ``percpu-eager`` (``FAULT_EAGER_REUSE``) frees a released slot at
once instead of sending it to garbage, the per-reuse scheme without its
``invlpg``. The TLB oracle reports both as stale translations.
"""

import numpy as np
from ..jit import inline_kernel, kernel

from .. import abi, tlb
from .contract import domain_vcpus, nested_walk
from ..atomics import lowest_bit, store_release
from ..irq import irq_point, irq_restore, irq_save

NAME = "percpu"
DESCRIPTION = "per-vCPU mapcache of the ASI series: no lock, no epoch, garbage reclaimed with one flush per wrap"
DEFAULT_ENTRIES = 16
GEOMETRY = {
    "entries": "Xen ASI v2 series (Roger Pau Monne, xen-devel, 2025-01), patch 15 \"per-vCPU mapcache\": "
               "MAPCACHE_VCPU_ENTRIES 16 per vCPU, as issue #17 reads it (the series is not among the trees the "
               "tests read)",
    "hash": "Xen asm/domain.h: MAPHASH_ENTRIES 8 (the series keeps it)",
    "pool": "per vCPU: MAPCACHE_VCPU_ENTRIES slots, the domain's pool gone",
}
MAX_ENTRIES = 1 << 16
FAULT_NO_FLUSH = 1
FAULT_EAGER_REUSE = 2
REFCNT_LIMIT = 1 << 32
IRQS_OFF = ("map", "unmap")     # local_irq_save around both, as the old design it derives from

NOTINUSE = -1

# Per-vCPU row (vst[vcpu, ...]) after the harness's reserved words.
V_CURSOR = abi.V_RESERVED
V_HASH = abi.V_RESERVED + 1     # then hash_mfn[H], hash_idx[H], hash_ref[H], inuse[W], garbage[W]


@kernel
def _offsets(h, e):
    """(hash_mfn, hash_idx, hash_ref, inuse, garbage, end) word offsets in a vCPU's row: the one
    place they are written, for the compiled hooks and the Python side (layout, check) alike."""
    w = (e + 63) // 64
    hm = V_HASH
    iu = hm + 3 * h
    return hm, hm + h, hm + 2 * h, iu, iu + w, iu + 2 * w


# Every slot may be held at once by a nested walk: E must cover PAGING_LEVELS**2.
validate = nested_walk("percpu")


def state_shape(cfg):
    """Words of shared state: (domain words, domain bitmap words, per-vCPU row words)."""
    return 0, 0, _offsets(cfg.hash_entries, cfg.entries)[5]


def init_state(views, cfg):
    hm, hi, hr, iu, _, end = _offsets(cfg.hash_entries, cfg.entries)
    vst = views["vst"]
    vst[:, V_CURSOR] = 0
    vst[:, hm:hr] = NOTINUSE
    vst[:, hr:end] = 0


@kernel
def _find_zero(vrow, iu, start, e):
    """First slot at or after ``start`` whose inuse bit is clear; ``e`` if none."""
    i = start
    while i < e:
        free = ~(vrow[iu + i // 64] >> np.int64(i % 64))
        if free != 0:
            bit = lowest_bit(free)
            if i % 64 + bit < 64:          # a free bit past this word's end means the next word
                return i + bit if i + bit < e else e
        i = (i // 64 + 1) * 64
    return e


# local_irq_save from entry to every return, written out at each return rather than around a
# wrapped body: numba's IR inliner has mis-compiled a helper inlined twice (_find_zero and
# _retire, when they were inlined at that level; they are plain kernels now, left to LLVM) into
# a function that is itself inlined into another (the state then diverged from the model).
@inline_kernel
def map_page(vcpu, mfn, p, dom, pte, dbits, vrow, srow, tlbv, irq=None):
    irq_save(irq, vrow)
    h = p[abi.P_HASH]
    e = p[abi.P_ENTRIES]
    w = (e + 63) // 64
    hm, hi, hr, iu, gb, _ = _offsets(h, e)
    base = vcpu * e
    b = mfn & (h - 1)
    if vrow[hm + b] == mfn:
        r = vrow[hr + b] + 1
        vrow[hr + b] = r
        srow[abi.S_HASH_HITS] += 1
        irq_restore(irq, vrow)
        if r >= REFCNT_LIMIT:
            srow[abi.S_REFCNT_ERR] += 1
            return -abi.ST_REFCOUNT
        return abi.MAPCACHE_VA + base + vrow[hi + b]

    idx = _find_zero(vrow, iu, vrow[V_CURSOR], e)
    irq_point(irq, vcpu, p, dom, pte, dbits, vrow, srow, tlbv)      # slot chosen, not yet marked
    if idx >= e:
        freed = 0
        for k in range(w):
            g = vrow[gb + k]
            if g != 0:
                vrow[iu + k] &= ~g
                vrow[gb + k] = 0
                freed += 1
        if freed:
            srow[abi.S_HARVEST] += 1
        idx = _find_zero(vrow, iu, 0, e)
        if idx >= e:
            # Take one of this vCPU's idle hash entries, starting at the MFN's bucket.
            i = b
            for _ in range(h):
                if vrow[hi + i] != NOTINUSE and vrow[hr + i] == 0:
                    idx = vrow[hi + i]
                    store_release(pte, base + idx, 0)
                    vrow[hi + i] = NOTINUSE
                    vrow[hm + i] = NOTINUSE
                    break
                i = (i + 1) & (h - 1)
        if idx >= e:
            srow[abi.S_EXHAUSTED] += 1
            irq_restore(irq, vrow)
            return -abi.ST_EXHAUSTED
        if (p[abi.P_FAULT] & FAULT_NO_FLUSH) == 0:
            tlb.flush_all(tlbv, p, dom, vrow, srow)    # one flush makes every reclaimed slot reusable

    vrow[iu + idx // 64] |= np.int64(1) << np.int64(idx % 64)
    vrow[V_CURSOR] = idx + 1
    irq_point(irq, vcpu, p, dom, pte, dbits, vrow, srow, tlbv)      # slot marked, PTE not yet written
    store_release(pte, base + idx, mfn | tlb.PTE_PRESENT)
    if p[abi.P_LONG_HOLD] > 0:
        tlb.spin_cycles(p[abi.P_LONG_HOLD])    # --long-hold: widen the window between PTE write and use
    irq_restore(irq, vrow)
    return abi.MAPCACHE_VA + base + idx


@kernel
def _retire(vrow, pte, base, gb, iu, idx, eager):
    """A slot leaves use: PTE cleared, then garbage until the next wrap (or free at once, when broken)."""
    store_release(pte, base + idx, 0)
    if eager:
        vrow[iu + idx // 64] &= ~(np.int64(1) << np.int64(idx % 64))
    else:
        vrow[gb + idx // 64] |= np.int64(1) << np.int64(idx % 64)


@inline_kernel
def unmap_page(vcpu, va, p, dom, pte, dbits, vrow, srow, tlbv, irq=None):
    irq_save(irq, vrow)
    h = p[abi.P_HASH]
    e = p[abi.P_ENTRIES]
    hm, hi, hr, iu, gb, _ = _offsets(h, e)
    base = vcpu * e
    idx = va - abi.MAPCACHE_VA - base
    if idx < 0 or idx >= e:
        irq_restore(irq, vrow)
        return abi.ST_BAD_VA
    ent = pte[base + idx]
    if (ent & tlb.PTE_PRESENT) == 0:
        irq_restore(irq, vrow)
        return abi.ST_BAD_VA
    mfn = ent & tlb.PTE_MFN_MASK
    b = mfn & (h - 1)
    eager = (p[abi.P_FAULT] & FAULT_EAGER_REUSE) != 0
    irq_point(irq, vcpu, p, dom, pte, dbits, vrow, srow, tlbv)      # bucket not yet updated
    if vrow[hi + b] == idx:
        r = vrow[hr + b]
        if r == 0:
            srow[abi.S_REFCNT_ERR] += 1
            irq_restore(irq, vrow)
            return abi.ST_REFCOUNT
        vrow[hr + b] = r - 1
    elif vrow[hr + b] == 0:
        old = vrow[hi + b]
        if old != NOTINUSE:
            _retire(vrow, pte, base, gb, iu, old, eager)
        vrow[hm + b] = mfn
        vrow[hi + b] = idx
    else:
        _retire(vrow, pte, base, gb, iu, idx, eager)
    irq_restore(irq, vrow)
    return abi.ST_OK


def check(views, cfg, live_by_vcpu, victims=frozenset()):
    """Invariants of every vCPU's cache on a quiescent state (see the module essay).

    slot_leaks: in-use slots that no live mapping, bucket or garbage bit
    explains. invariant_violations: everything else the essay lists.
    """
    h, e = cfg.hash_entries, cfg.entries
    hm, hi, hr, iu, gb, _ = _offsets(h, e)
    vst, pte = views["vst"], views["pte"]
    present = int(tlb.PTE_PRESENT)
    leaks = bad = 0
    for v in range(domain_vcpus(cfg)):      # idle vCPUs too: their rows must stay empty
        if v in victims:          # killed mid-operation: its private state is half updated
            continue
        row = vst[v]
        base = v * e

        def bit(off, i, row=row):
            return (int(row[off + i // 64]) >> (i % 64)) & 1

        held: dict[int, int] = {}
        for va, mfn in live_by_vcpu.get(v, []):
            i = va - abi.MAPCACHE_VA - base
            if not 0 <= i < e:
                bad += 1
                continue
            held[i] = held.get(i, 0) + 1
            if not bit(iu, i) or bit(gb, i) or pte[base + i] != (mfn | present):
                bad += 1
        cached = set()
        for b in range(h):
            i = int(row[hi + b])
            if i == NOTINUSE:
                if row[hm + b] != NOTINUSE or row[hr + b] != 0:
                    bad += 1
                continue
            if not 0 <= i < e or i in cached:
                bad += 1
                continue
            cached.add(i)
            if not bit(iu, i) or bit(gb, i) or pte[base + i] != (int(row[hm + b]) | present):
                bad += 1
            if row[hr + b] != held.get(i, 0):
                bad += 1
        if not 0 <= row[V_CURSOR] <= e:
            bad += 1
        for i in range(e):
            inuse, garbage = bit(iu, i), bit(gb, i)
            if garbage and (not inuse or pte[base + i] != 0):
                bad += 1
            if not inuse and pte[base + i] != 0:
                bad += 1
            if inuse and not garbage and i not in held and i not in cached:
                leaks += 1
        if e % 64:
            last = e // 64
            for off in (iu, gb):
                if int(row[off + last]) >> (e % 64):
                    bad += 1            # a bit past the last slot
    return {"slot_leaks": leaks, "invariant_violations": bad}
