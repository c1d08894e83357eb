"""lockless: the seed's per-vCPU mapcache, no lock and no atomic on the map path.

Algorithm. Each vCPU owns ``MAPCACHE_VCPU_ENTRIES`` (E, default 32) slots, at
global indices ``vcpu * E + idx``; nothing but that vCPU ever touches them, so
no lock is needed. Per vCPU: a hash of ``MAPHASH_ENTRIES`` (H, default 8)
buckets ``hash_mfn`` / ``hash_idx`` keyed by ``mfn & (H - 1)``, an 8-bit
refcount per slot, and an ``inuse`` bitmap.

- map: a bucket hit reuses the bucket's slot. A miss takes the first free slot,
  writes its PTE, flushes that one slot from the local TLB (``invlpg``: the
  slot may still be cached for the MFN it held before), frees the bucket's
  previous slot if nobody holds it, and points the bucket at the new slot.
  Either way the slot's refcount goes up.
- unmap: the refcount goes down; a slot at zero whose MFN is not the one its
  bucket caches is freed. Hash-held slots stay in use.

Invariants: a free slot has refcount 0; each in-use slot is held (refcount > 0)
or cached by its bucket; the PTE of a hash-held slot maps the bucket's MFN.

Flaws of the seed kept on purpose, for the oracle to find: the refcount is 8
bits and wraps after 255 nested maps of one MFN (with ``--refcount-wrap stop``,
the default, reported as a refcount error and the run stops; with ``wrap`` it
wraps silently as the seed's ``uint8_t`` does: the slot, held 256 times, reads
as free, the next map that evicts its bucket frees it and a later map reuses
it while it is still held, which the oracle reports); exhaustion is per vCPU, with no borrowing; and unmap frees a
slot only when its bucket does not cache the same MFN, so a slot whose MFN was
evicted from the bucket and then mapped again elsewhere while still held is
never freed (a slot leak). A page-table walk maps distinct frames, so the
``ptwalk`` workload never hits that leak; nesting the same MFN with a colliding
MFN in between does.

Interrupts (``--irq-rate``, testbed/irq.py): map and unmap run under
``local_irq_save`` as in the seed (``irq_save``/``irq_restore``), so an
interrupt arriving at one of their arrival points (``irq_point``, between the
steps below) is deferred to the end of the operation. An interrupt handler's
own mapping takes a slot of the same vCPU: the geometry rule counts it.

Simplifications: the PTE write is a release store to the shared page table,
read by this vCPU's own TLB only.

Negative controls: ``lockless-noflush`` (fault bit ``FAULT_NO_FLUSH``) skips the
``invlpg`` on slot reuse: the TLB then keeps translating the slot to the frame
it held before, which the access check reports as a stale translation.
``lockless-free-held`` (``FAULT_FREE_HELD``) frees the bucket's previous slot
at refcount 1 instead of 0, that is while one mapping still holds it; a later
map of the same walk takes it, which the oracle reports as a reused held slot.
``lockless-noirqsave`` (``FAULT_NO_IRQSAVE``) leaves out ``local_irq_save``:
an interrupt arriving between the choice of a free slot and the setting of its
``inuse`` bit lets the handler take the same slot and cache it in its bucket;
the interrupted map then writes its own MFN into that slot's PTE, so the
handler's bucket caches a slot that maps another frame (a stale translation at
its next hit, an invariant violation in ``check``). Only a run with
``--irq-rate`` can catch it.
"""

import numpy as np
from ..jit import inline_kernel, kernel, nonneg

from .. import abi, tlb
from .contract import domain_vcpus, nested_walk
from ..atomics import lowest_bit, store_release
from ..irq import irq_point, irq_restore, irq_save

NAME = "lockless"
DESCRIPTION = "the seed's per-vCPU mapcache: no lock, 8-bit refcounts, invlpg on slot reuse"
DEFAULT_ENTRIES = 32
GEOMETRY = {
    "entries": "the seed patch (per-vcpu-mapcache-patch.txt), include/asm-x86/config.h: "
               "#define MAPCACHE_VCPU_ENTRIES 32",
    "hash": "Xen asm/domain.h: MAPHASH_ENTRIES 8 (the seed keeps it)",
    "pool": "the seed's mapcache_vcpu_init: MAPCACHE_VCPU_ENTRIES slots per vCPU, at vcpu_id * "
            "MAPCACHE_VCPU_ENTRIES",
}
FAULT_NO_FLUSH = 1
FAULT_FREE_HELD = 2
FAULT_NO_IRQSAVE = 4
MAX_ENTRIES = 256           # the inuse bitmap of one row; the 8-bit refcount caps nothing here
REFCNT_MASK = 0xFF
IRQS_OFF = ("map", "unmap")     # local_irq_save around both, as in the seed


@kernel
def _offsets(h, e):
    """(hash_mfn, hash_idx, refcnt, inuse, end) word offsets in a vCPU's row: the one place they
    are written, for the compiled hooks and the Python side (layout, check) alike."""
    hm = abi.V_RESERVED
    hi = hm + h
    rc = hi + h
    iu = rc + e
    return hm, hi, rc, iu, iu + (e + 63) // 64


# The seed's geometry rule, stated the right way round: room for a nested walk beside the hash.
validate = nested_walk("lockless", beside_hash=True, note=" (the seed's BUILD_BUG_ON states this check inverted)",
                       then=" and watch it exhaust")


def state_shape(cfg):
    """Words of shared state: (domain words, domain bitmap words, per-vCPU row words)."""
    return 8, 0, _offsets(cfg.hash_entries, cfg.entries)[4]


def init_state(views, cfg):
    hm, hi, _, _, _ = _offsets(cfg.hash_entries, cfg.entries)
    vst = views["vst"]
    vst[:, hm:hi] = -1
    vst[:, hi:hi + cfg.hash_entries] = -1


# local_irq_save from entry to every return, written out at each return (as percpu does) rather
# than around a wrapped body: one level less of numba IR inlining, which has mis-compiled before.
@inline_kernel
def map_page(vcpu, mfn, p, dom, pte, dbits, vrow, srow, tlbv, irq=None):
    save = (p[abi.P_FAULT] & FAULT_NO_IRQSAVE) == 0      # lockless-noirqsave leaves it out
    irq_save(irq, vrow, save)
    h = p[abi.P_HASH]
    e = p[abi.P_ENTRIES]
    hm, hi, rc, iu, _ = _offsets(h, e)
    base = vcpu * e
    # Every index below is >= 0 (mfn >= 0, idx and old checked): unsigned, no wraparound code.
    b = nonneg(hm + (mfn & (h - 1)))
    hb = nonneg(hi + (mfn & (h - 1)))
    old = vrow[hb]
    if vrow[b] != mfn:
        idx = -1
        for w in range((e + 63) // 64):
            free = ~vrow[nonneg(iu + w)]
            if free != 0:
                bit = lowest_bit(free)
                if w * 64 + bit < e:
                    idx = w * 64 + bit
                break
        if idx < 0:
            srow[abi.S_EXHAUSTED] += 1
            irq_restore(irq, vrow, save)
            return -abi.ST_EXHAUSTED
        irq_point(irq, vcpu, p, dom, pte, dbits, vrow, srow, tlbv)     # slot chosen, not yet marked
        vrow[nonneg(iu + idx // 64)] |= np.int64(1) << np.int64(idx % 64)
        irq_point(irq, vcpu, p, dom, pte, dbits, vrow, srow, tlbv)     # marked, PTE not yet written
        store_release(pte, base + idx, mfn | tlb.PTE_PRESENT)
        if p[abi.P_LONG_HOLD] > 0:
            tlb.spin_cycles(p[abi.P_LONG_HOLD])    # --long-hold: widen the window between PTE write and use
        if (p[abi.P_FAULT] & FAULT_NO_FLUSH) == 0:
            tlb.flush_one(tlbv, p, base + idx, srow)
        irq_point(irq, vcpu, p, dom, pte, dbits, vrow, srow, tlbv)     # PTE written, bucket not yet updated
        # FAULT_FREE_HELD: free it at refcount 1, while a mapping still holds it
        if old >= 0 and vrow[nonneg(rc + old)] <= ((p[abi.P_FAULT] & FAULT_FREE_HELD) >> 1):
            vrow[nonneg(iu + old // 64)] &= ~(np.int64(1) << np.int64(old % 64))
        vrow[b] = mfn
        vrow[hb] = idx
    else:
        idx = old
        srow[abi.S_HASH_HITS] += 1
    irq_point(irq, vcpu, p, dom, pte, dbits, vrow, srow, tlbv)         # slot known, refcount not yet raised
    r = (vrow[nonneg(rc + idx)] + 1) & REFCNT_MASK
    vrow[nonneg(rc + idx)] = r
    irq_restore(irq, vrow, save)
    if r == 0 and p[abi.P_REFCOUNT_WRAP] == 0:
        srow[abi.S_REFCNT_ERR] += 1
        return -abi.ST_REFCOUNT
    return abi.MAPCACHE_VA + base + idx


@inline_kernel
def unmap_page(vcpu, va, p, dom, pte, dbits, vrow, srow, tlbv, irq=None):
    h = p[abi.P_HASH]
    e = p[abi.P_ENTRIES]
    hm, hi, rc, iu, _ = _offsets(h, e)
    base = vcpu * e
    idx = va - abi.MAPCACHE_VA - base
    if idx < 0 or idx >= e:
        return abi.ST_BAD_VA
    save = (p[abi.P_FAULT] & FAULT_NO_IRQSAVE) == 0
    irq_save(irq, vrow, save)
    mfn = pte[nonneg(base + idx)] & tlb.PTE_MFN_MASK       # 0 <= idx < e from here on
    r = vrow[nonneg(rc + idx)]
    if r == 0 and p[abi.P_REFCOUNT_WRAP] == 0:
        srow[abi.S_REFCNT_ERR] += 1
        irq_restore(irq, vrow, save)
        return abi.ST_REFCOUNT
    r = (r - 1) & REFCNT_MASK
    vrow[nonneg(rc + idx)] = r
    irq_point(irq, vcpu, p, dom, pte, dbits, vrow, srow, tlbv)         # refcount lowered, slot not yet freed
    if vrow[nonneg(hm + (mfn & (h - 1)))] != mfn and r == 0:
        vrow[nonneg(iu + idx // 64)] &= ~(np.int64(1) << np.int64(idx % 64))
    irq_restore(irq, vrow, save)
    return abi.ST_OK


def check(views, cfg, live_by_vcpu, victims=frozenset()):
    """Invariants of every vCPU's cache after a run; live mappings come from the harness.

    slot_leaks: in-use slots that neither a live mapping nor a bucket explains.
    invariant_violations: refcounts that disagree with the live mappings, free
    slots with a refcount, buckets whose slot's PTE does not map their MFN, live
    mappings outside the vCPU's slots or whose PTE does not map their MFN.
    A killed vCPU (``victims``) is not checked: its slots are its own, and an
    operation the kill cut short leaves them half updated.
    """
    h, e = cfg.hash_entries, cfg.entries
    hm, hi, rc, iu, _ = _offsets(h, e)
    vst, pte = views["vst"], views["pte"]
    leaks = bad = 0
    for v in range(domain_vcpus(cfg)):      # idle vCPUs too: their rows must stay empty
        if v in victims:
            continue
        row = vst[v]
        held = np.zeros(e, dtype=np.int64)
        for va, mfn in live_by_vcpu.get(v, []):
            i = va - abi.MAPCACHE_VA - v * e
            if not 0 <= i < e:
                bad += 1                # not one of this vCPU's slots
                continue
            held[i] += 1
            if pte[v * e + i] != (mfn | int(tlb.PTE_PRESENT)):
                bad += 1                # the slot no longer maps what its holder mapped
        cached = set()
        for b in range(h):
            i = int(row[hi + b])
            if i >= 0:
                cached.add(i)
                if pte[v * e + i] != (int(row[hm + b]) | int(tlb.PTE_PRESENT)):
                    bad += 1
        for i in range(e):
            inuse = (int(row[iu + i // 64]) >> (i % 64)) & 1
            if row[rc + i] != held[i] & REFCNT_MASK:
                bad += 1
            if inuse and held[i] == 0 and i not in cached:
                leaks += 1
            if not inuse and held[i]:
                bad += 1
    return {"slot_leaks": leaks, "invariant_violations": bad}
