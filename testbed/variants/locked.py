"""locked: Xen's per-domain mapcache under one ticket spinlock (4.14, still upstream).

Algorithm. The domain owns ``vcpus * MAPCACHE_VCPU_ENTRIES`` slots (E, default
16 per vCPU), shared by all its vCPUs: a ``cursor``, an ``inuse`` and a
``garbage`` bitmap over all slots, an ``epoch`` and the TLB-clock time of the
last wrap, all guarded by one ticket spinlock. Each vCPU has a ``shadow_epoch``
and a hash of ``MAPHASH_ENTRIES`` (H, default 8) buckets ``{mfn, idx,
refcnt}`` with 32-bit refcounts.

- map, fast path: the MFN's bucket caches it: bump the refcount, no lock.
- map, slow path, under the lock: if the epoch moved since this vCPU last
  looked and this CPU has not flushed its TLB since that wrap (``NEED_FLUSH``),
  flush it. Take the first free slot at or after the cursor. None: wrap, that
  is, harvest the garbage bitmap into ``inuse`` (atomic exchange per word), and
  if still none evict one of this vCPU's idle hash entries, else BUG (here: an
  exhaustion report). A wrap flushes the local TLB, bumps the epoch and stamps
  it with the TLB clock. Mark the slot in use (atomic set-bit), move the
  cursor, drop the lock, then write the PTE.
- unmap, no lock: a slot that its bucket caches loses a reference. Otherwise,
  if the bucket is idle, the bucket's old slot goes to garbage and the bucket
  caches this slot instead; if not, this slot goes to garbage. Garbage slots
  get their PTE cleared but are not reused before the next wrap, which is what
  makes one batched flush per wrap enough.

Invariants: the lock is free whenever no vCPU is inside ``map``; a bucket's slot
is in use and its PTE maps the bucket's MFN; an in-use slot that is neither held
nor cached is garbage waiting for the next wrap.

The lock, chosen with ``--lock`` (``LOCKS``: ``ticket``, Xen's and the default, ``mcs`` or
``tas``; the kernel reads its index from ``p[P_LOCK]``), is testbed/locks.py's: ``acquire`` and
``release`` around the slow path's critical section, with their counters (acquisitions,
contention, spin, hold and handoff cycles). The domain words sit in one of the two layouts of
testbed/dom_layout.py, chosen with ``--dom-layout`` (``DOM_LAYOUTS``, ``xen`` by default:
``struct mapcache_domain``'s cursor, lock, epoch and TLB stamp on one cache line;
``padded``: each on its own; the kernel reads the index from ``p[P_DOM_LAYOUT]``).
``map_slow``, the slow path, is inlined once per layout with the layout a constant, so the
word offsets (``domain_words``, and the lock's ``lock_word`` and ``owner_words``) fold into it;
``dom_words`` lists them all by name for Python. After the layout's fixed words
(``DOM_WORDS``) come the mcs lock's nodes, one cache line per vCPU of the domain.

Interrupts (``--irq-rate``, testbed/irq.py): map and unmap run under
``local_irq_save`` as in Xen (``irq_save``/``irq_restore``). Their arrival
points (``irq_point``: with the lock held, after it is dropped, in unmap
between reading the bucket and updating it) therefore only defer an interrupt;
a handler that ran with the lock held would spin on the lock forever. An
interrupt handler's mapping takes a slot from the domain's pool like any other.
An NMI (``--nmi-rate``) is not deferred: its handler's map, reaching the lock
its own CPU holds (the owner word says so), stops with ``ST_DEADLOCK``
(counted in ``S_DEADLOCKS``) instead of spinning for ever: the run fails by
the check named ``deadlock``.

Simplifications: the 32-bit refcount is an int64 checked against 2**32 (a wrap
is a refcount error).

Negative controls: ``locked-nolock`` (``FAULT_NO_LOCK``) runs the slow path
without the lock, so two vCPUs can take the same slot; ``locked-noflush``
(``FAULT_NO_EPOCH_FLUSH``) skips the lazy flush after another vCPU's wrap, so a
TLB keeps translating a reused slot to its old frame; ``locked-garbage-held``
(``FAULT_GARBAGE_HELD``) lets unmap replace a bucket's slot while the bucket
still holds references, putting a held slot on the garbage list (its PTE
cleared under its holder); ``locked-garbage-pte`` (``FAULT_GARBAGE_PTE``)
puts slots on the garbage list without clearing their PTE, which only the
invariant check sees (a garbage slot must not be mapped).
"""

import numpy as np
from ..jit import inline_kernel, kernel, nonneg

from .. import abi, locks, tlb
from .contract import domain_vcpus
from ..atomics import exchange, fetch_and, fetch_or, load_acquire, lowest_bit, rdtsc, store_release
from ..dom_layout import DOM_LAYOUTS, DOM_WORDS, LAYOUT_PADDED, LAYOUT_XEN, domain_words, mapcache_words
from ..irq import irq_point, irq_restore, irq_save
from ..locks import LOCKS, acquire, owner_words, release

NAME = "locked"
DESCRIPTION = "Xen's per-domain mapcache: one spinlock (--lock), garbage bitmap, epochs, lazy TLB flush"
DEFAULT_ENTRIES = 16
GEOMETRY = {
    "entries": "Xen xen/arch/x86/include/asm/config.h (head c447b7308b; include/asm-x86/config.h at seed-base "
               "af01d330cb): MAPCACHE_VCPU_ENTRIES = CONFIG_PAGING_LEVELS * CONFIG_PAGING_LEVELS = 16",
    "hash": "Xen asm/domain.h: MAPHASH_ENTRIES 8",
    "pool": "Xen domain_page.c mapcache_domain_init: d->max_vcpus * MAPCACHE_VCPU_ENTRIES slots shared by the "
            "domain (--domain-vcpus)",
}
FAULT_NO_LOCK = 1
FAULT_NO_EPOCH_FLUSH = 2
FAULT_GARBAGE_HELD = 4
FAULT_GARBAGE_PTE = 8
MAX_ENTRIES = 1 << 16
REFCNT_LIMIT = 1 << 32
IRQS_OFF = ("map", "unmap")     # local_irq_save around both, as in Xen

# Per-vCPU row (vst[vcpu, ...]) after the harness's reserved words.
V_SHADOW_EPOCH = abi.V_RESERVED
V_HASH = abi.V_RESERVED + 8     # then hash_mfn[H], hash_idx[H], hash_ref[H]

NOTINUSE = -1


@kernel
def bitmap_words(slots):
    return (slots + 63) // 64


@kernel
def garbage_base(slots):
    """Index in ``dbits`` of the garbage bitmap: its own cache line after ``inuse``."""
    return (bitmap_words(slots) + 7) // 8 * 8


def state_shape(cfg):
    """Words of shared state: (domain words, domain bitmap words, per-vCPU row words)."""
    d = domain_vcpus(cfg)       # Xen: mapcache_domain_init sizes the pool for d->max_vcpus
    slots = d * cfg.entries
    return DOM_WORDS + 8 * d, garbage_base(slots) + bitmap_words(slots), V_HASH + 3 * cfg.hash_entries


def init_state(views, cfg):
    h = cfg.hash_entries
    views["vst"][:, V_HASH:V_HASH + 2 * h] = NOTINUSE
    views["vst"][:, V_HASH + 2 * h:V_HASH + 3 * h] = 0
    views["dom"][dom_words(_layout(cfg))["epoch"]] = 0


@kernel
def find_zero(dbits, start, slots):
    """First slot at or after ``start`` whose inuse bit is clear; ``slots`` if none."""
    i = start
    while i < slots:
        w = load_acquire(dbits, i // 64)
        free = ~(w >> np.int64(i % 64))
        if free != 0:
            bit = lowest_bit(free)
            # a free bit past the end of this word means the next word
            if i % 64 + bit < 64:
                j = i + bit
                return j if j < slots else slots
        i = (i // 64 + 1) * 64
    return slots


@kernel
def set_bit(dbits, base, idx):
    fetch_or(dbits, base + idx // 64, np.int64(1) << np.int64(idx % 64))


@inline_kernel
def map_page(vcpu, mfn, p, dom, pte, dbits, vrow, srow, tlbv, irq=None):
    # local_irq_save from entry to every return (written out at each, rather than around a
    # wrapped body: one level less of numba's IR inlining, which has mis-compiled before)
    irq_save(irq, vrow)
    h = p[abi.P_HASH]
    hm = V_HASH
    hi = V_HASH + h
    hr = V_HASH + 2 * h
    b = mfn & (h - 1)
    if vrow[nonneg(hm + b)] == mfn:      # mfn >= 0: unsigned indices, no wraparound code
        r = vrow[nonneg(hr + b)] + 1
        vrow[nonneg(hr + b)] = r
        srow[abi.S_HASH_HITS] += 1
        irq_restore(irq, vrow)
        if r >= REFCNT_LIMIT:
            srow[abi.S_REFCNT_ERR] += 1
            return -abi.ST_REFCOUNT
        return abi.MAPCACHE_VA + vrow[nonneg(hi + b)]
    # The slow path, inlined once per layout with the layout a constant, so that its offsets fold
    # into the code: the choice costs this one branch (taken from p at run time, it cost 1.5 ns a map).
    if p[abi.P_DOM_LAYOUT] == LAYOUT_XEN:
        va = map_slow(vcpu, mfn, p, dom, pte, dbits, vrow, srow, tlbv, LAYOUT_XEN, irq)
    else:
        va = map_slow(vcpu, mfn, p, dom, pte, dbits, vrow, srow, tlbv, LAYOUT_PADDED, irq)
    irq_restore(irq, vrow)
    return va


@inline_kernel
def map_slow(vcpu, mfn, p, dom, pte, dbits, vrow, srow, tlbv, layout, irq):
    """``map_page`` past a hash miss, the domain words laid out as ``layout`` (LAYOUT_*)."""
    h = p[abi.P_HASH]
    slots = p[abi.P_SLOTS]
    fault = p[abi.P_FAULT]
    hm = V_HASH
    hi = V_HASH + h
    hr = V_HASH + 2 * h
    b = mfn & (h - 1)
    nolock = (fault & FAULT_NO_LOCK) != 0
    kind = p[abi.P_LOCK]
    d_cursor, d_epoch, d_tlbflush_ts = domain_words(layout)
    my = 0
    # A handler (an NMI: irq_save does not hold it back) inside this CPU's own critical section
    # would spin for ever on the lock its CPU holds: named, and the run ends (no ticket taken).
    if vrow[abi.V_IRQ_OFF] != 0 and not nolock and dom[owner_words(layout)[0]] == vcpu + 1:
        srow[abi.S_DEADLOCKS] += 1
        return -abi.ST_DEADLOCK
    if not nolock:
        my = acquire(dom, srow, vcpu, kind, layout)
    # A cycle-counter read costs about 11 ns here, as much as the rest of the critical
    # section: hold times are measured on latency-sampled maps only (1 in 2**lat_every).
    t_hold = rdtsc() if srow[abi.S_SAMPLING] != 0 else 0
    irq_point(irq, vcpu, p, dom, pte, dbits, vrow, srow, tlbv)      # lock held
    epoch = dom[d_epoch]
    if epoch != vrow[V_SHADOW_EPOCH]:
        vrow[V_SHADOW_EPOCH] = epoch
        if (fault & FAULT_NO_EPOCH_FLUSH) == 0 and tlb.need_flush(
            vrow[abi.V_TLBFLUSH_TIME], dom[d_tlbflush_ts], tlb.clock_now(dom)
        ):
            tlb.flush_all(tlbv, p, dom, vrow, srow)
            srow[abi.S_EPOCH_FLUSH] += 1

    idx = find_zero(dbits, dom[d_cursor], slots)
    if idx >= slots:
        gb = garbage_base(slots)
        freed = 0
        for i in range(bitmap_words(slots)):
            g = exchange(dbits, gb + i, 0)
            if g != 0:
                fetch_and(dbits, i, ~g)
                freed += 1
        if freed:
            srow[abi.S_HARVEST] += 1
        idx = find_zero(dbits, 0, slots)
        if idx >= slots:
            # Replace one of this vCPU's idle hash entries, starting at the MFN's bucket.
            i = b
            for _ in range(h):
                if vrow[hi + i] != NOTINUSE and vrow[hr + i] == 0:
                    idx = vrow[hi + i]
                    store_release(pte, idx, 0)
                    vrow[hi + i] = NOTINUSE
                    vrow[hm + i] = NOTINUSE
                    break
                i = (i + 1) & (h - 1)
        if idx >= slots:
            srow[abi.S_EXHAUSTED] += 1
            if not nolock:
                release(dom, my, srow, t_hold, vcpu, kind, layout)
            return -abi.ST_EXHAUSTED
        tlb.flush_all(tlbv, p, dom, vrow, srow)
        epoch = dom[d_epoch] + 1
        dom[d_epoch] = epoch
        vrow[V_SHADOW_EPOCH] = epoch
        dom[d_tlbflush_ts] = tlb.clock_now(dom)

    set_bit(dbits, 0, idx)
    dom[d_cursor] = idx + 1
    if p[abi.P_LONG_HOLD] > 0:
        tlb.spin_cycles(p[abi.P_LONG_HOLD])
    if not nolock:
        release(dom, my, srow, t_hold, vcpu, kind, layout)
    irq_point(irq, vcpu, p, dom, pte, dbits, vrow, srow, tlbv)      # slot taken, PTE not yet written
    store_release(pte, idx, mfn | tlb.PTE_PRESENT)
    return abi.MAPCACHE_VA + idx


@inline_kernel
def unmap_page(vcpu, va, p, dom, pte, dbits, vrow, srow, tlbv, irq=None):
    irq_save(irq, vrow)
    h = p[abi.P_HASH]
    slots = p[abi.P_SLOTS]
    hm = V_HASH
    hi = V_HASH + h
    hr = V_HASH + 2 * h
    idx = va - abi.MAPCACHE_VA
    if idx < 0 or idx >= slots:
        irq_restore(irq, vrow)
        return abi.ST_BAD_VA
    e = pte[nonneg(idx)]
    if (e & tlb.PTE_PRESENT) == 0:
        irq_restore(irq, vrow)
        return abi.ST_BAD_VA
    mfn = e & tlb.PTE_MFN_MASK
    b = mfn & (h - 1)
    gb = garbage_base(slots)
    fault = p[abi.P_FAULT]
    zap = (fault & FAULT_GARBAGE_PTE) == 0
    irq_point(irq, vcpu, p, dom, pte, dbits, vrow, srow, tlbv)      # bucket not yet updated
    # 0 <= idx < slots and b >= 0: unsigned indices, no wraparound code
    if vrow[nonneg(hi + b)] == idx:
        r = vrow[nonneg(hr + b)]
        if r == 0:
            srow[abi.S_REFCNT_ERR] += 1
            irq_restore(irq, vrow)
            return abi.ST_REFCOUNT
        vrow[nonneg(hr + b)] = r - 1
    elif vrow[nonneg(hr + b)] == 0 or (fault & FAULT_GARBAGE_HELD) != 0:
        old = vrow[nonneg(hi + b)]
        if old != NOTINUSE:
            if zap:
                store_release(pte, old, 0)
            set_bit(dbits, gb, old)
        vrow[nonneg(hm + b)] = mfn
        vrow[nonneg(hi + b)] = idx
    else:
        if zap:
            store_release(pte, idx, 0)
        set_bit(dbits, gb, idx)
    irq_restore(irq, vrow)
    return abi.ST_OK


def _layout(cfg) -> str:
    return getattr(cfg, "dom_layout", None) or DOM_LAYOUTS[0]


def _lock(cfg) -> str:
    return cfg.lock if cfg.lock in LOCKS else LOCKS[0]


def dom_words(layout: str, lock: str = "ticket") -> dict:
    """Where each domain word of ``layout`` (a DOM_LAYOUTS name) is, for ``lock``: the offsets the
    kernels use (``domain_words``, ``locks.lock_word``, ``locks.owner_words``), by name."""
    return {**mapcache_words(layout), **locks.words(layout, lock)}


def lock_waiters(views, cfg) -> int:
    """vCPUs waiting for the lock now."""
    return locks.waiters(views["dom"], _layout(cfg), _lock(cfg), cfg.vcpus)


def lock_free(views, cfg) -> bool:
    return locks.is_free(views["dom"], _layout(cfg), _lock(cfg))


def lock_holder(views, cfg):
    return locks.holder(views["dom"], _layout(cfg))


def describe_stall(views, cfg, vcpu):
    """What a stopped vCPU means for the others: does it hold the lock, how many wait."""
    holder = lock_holder(views, cfg)
    return {"holds_lock": holder == vcpu, "lock_holder": holder, "waiting_for_lock": lock_waiters(views, cfg)}

def check(views, cfg, live_by_vcpu, victims=frozenset()):
    """Invariants after a run; live mappings (va, mfn) per vCPU come from the harness.

    slot_leaks: in-use slots that no live mapping, hash entry or garbage bit
    explains. invariant_violations: the lock not free; a hash entry whose slot
    is not in use or whose PTE does not map its MFN; a hash refcount that
    disagrees with the live mappings through it; a live mapping's slot not in
    use, or whose PTE does not map the live mapping's MFN; a garbage slot that
    is held or cached, or whose PTE is still present; a slot held or cached
    by two vCPUs.

    A killed vCPU (``victims``) may have died holding a ticket or the lock, or
    between taking a slot and listing it as held: its own hash entries and
    mappings are not checked, one unexplained slot per victim is its
    operation in flight, and the lock may stay taken.
    """
    h, slots = cfg.hash_entries, domain_vcpus(cfg) * cfg.entries
    dbits, pte, vst = views["dbits"], views["pte"], views["vst"]
    gb = garbage_base(slots)
    present = int(tlb.PTE_PRESENT)

    def bit(base, i):
        return (int(dbits[base + i // 64]) >> (i % 64)) & 1

    bad = 0 if lock_free(views, cfg) or victims else 1
    explained = set()
    owner: dict[int, int] = {}          # slot -> the vCPU holding or caching it
    for v in range(domain_vcpus(cfg)):      # idle vCPUs too: their hashes must stay empty
        row = vst[v]
        if v in victims:
            for b in range(h):
                if row[V_HASH + h + b] != NOTINUSE:
                    explained.add(int(row[V_HASH + h + b]))
            for va, _ in live_by_vcpu.get(v, []):
                explained.add(va - abi.MAPCACHE_VA)
            continue
        held = {}
        for va, mfn in live_by_vcpu.get(v, []):
            idx = va - abi.MAPCACHE_VA
            if not 0 <= idx < slots:
                bad += 1
                continue
            held[idx] = held.get(idx, 0) + 1
            if pte[idx] != (mfn | present):
                bad += 1
        mine = set(held)
        for b in range(h):
            idx = int(row[V_HASH + h + b])
            if idx == NOTINUSE:
                continue
            explained.add(idx)
            mine.add(idx)
            mfn = int(row[V_HASH + b])
            if not bit(0, idx) or pte[idx] != (mfn | present):
                bad += 1
            if row[V_HASH + 2 * h + b] != held.get(idx, 0):
                bad += 1
        for idx in held:
            explained.add(idx)
            if not bit(0, idx):
                bad += 1
        for idx in mine:
            if bit(gb, idx):
                bad += 1                # garbage, yet held or cached
            if owner.setdefault(idx, v) != v:
                bad += 1                # held or cached by two vCPUs
    for i in range(slots):
        if bit(gb, i) and pte[i] != 0:
            bad += 1                    # garbage must not be mapped: its PTE was zapped first
    leaks = sum(1 for i in range(slots) if bit(0, i) and not bit(gb, i) and i not in explained)
    leaks = max(0, leaks - len(victims))
    return {"slot_leaks": leaks, "invariant_violations": bad}