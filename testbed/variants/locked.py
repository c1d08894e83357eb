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

The lock, chosen with ``--lock`` (``LOCKS``; the kernel reads its index from
``p[P_LOCK]``):

- ``ticket`` (default, Xen's): FIFO, PAUSE in the spin, no backoff, no
  sleeping. Every waiter spins on the one line the holder writes when it
  releases. In the xen layout (below) head and tail are the two halves of one
  64-bit word, as Xen packs ``{u16 head, tail}`` into one 32-bit word:
  ``spin_lock`` is one fetch-and-add of 1 to the tail half, whose old value
  holds the ticket and the head (equal: taken, no further load; else spin on
  the head half); ``spin_unlock`` stores ticket + 1 into the head half alone
  (Xen's ``add_sized(&head, 1)``), so the head wraps at 2**32 without carrying
  into the tail. Tickets compare modulo 2**32. In the padded layout head and
  tail are two words.
- ``mcs`` (Mellor-Crummey and Scott): a queue of per-vCPU nodes ``{next,
  locked}``. A vCPU swaps its node into the tail; if there was a predecessor it
  links itself behind it and spins on its *own* node, which only its
  predecessor writes, once, to hand the lock over: local spinning, one
  cache-line transfer per handoff. Release hands over to ``next``, or swings
  the tail back to empty by compare-and-swap, waiting for a successor that has
  swapped itself in but not linked yet. The nodes live in the domain words
  after ``D_MCS_NODES``, one cache line per vCPU, laid out by ownership.
- ``tas``: test-and-test-and-set with bounded exponential backoff. Read the
  word until it looks free, then exchange 1 into it; on failure PAUSE for a
  delay that doubles up to ``TAS_BACKOFF_MAX`` rounds. No order: whoever
  swaps first wins, so a vCPU can take the lock again and again while others
  back off (unfair), and a lock freed during everyone's backoff stays idle
  (slow handoff).

Handoff cost and fairness. A releaser that knows vCPUs are waiting (ticket:
the tail is past the next ticket; mcs: it has a successor; tas: the count of
backing-off waiters, bumped once per contended acquisition, is non-zero)
stamps the cycle counter and itself into ``D_HANDOFF_TSC`` and
``D_HANDOFF_FROM`` just before it releases; the next holder adds the cycles
since that stamp to ``S_HANDOFF_CYCLES`` and clears it, or, when it is the
releaser itself taking the lock back ahead of the waiters (tas only: the queue
locks cannot), counts ``S_LOCK_REACQ``. Both happen under the lock. The spread
of ``S_LOCK_ACQ`` across vCPUs is the fairness the results report.

Domain layout, chosen with ``--dom-layout`` (``DOM_LAYOUTS``; the kernel
reads its index from ``p[P_DOM_LAYOUT]``; ``map_slow``, the slow path, is
inlined once per layout with the layout a constant, so ``domain_words`` folds
into it, and ``acquire`` and ``release`` take their words from ``lock_word``
and ``owner_words``; ``dom_words`` lists them all by name for Python).
Word 0 is the global TLB clock (``tlb.D_TLBCLOCK``) in both.

- ``xen`` (default), as Xen's ``struct mapcache_domain``: ``cursor``, the lock
  word, ``epoch`` and ``tlbflush_timestamp`` on one cache line (words 8..11:
  ``X_CURSOR``, ``X_LOCK``, ``X_EPOCH``, ``X_TLBFLUSH_TS``), so the slow path's
  critical section touches one shared line besides the bitmaps. The lock word
  is the ticket word, or the mcs tail, or the tas word, whichever lock runs.
  The owner word (stall reports) and the handoff stamps are the testbed's,
  not Xen's: they sit on the next line (``X_LOCK_OWNER``, ``X_HANDOFF_TSC``,
  ``X_HANDOFF_FROM``), so the hot line holds what Xen's does and nothing a
  stall report or the handoff timing needs; the owner is written on every
  acquisition and release (a stopped holder must be named even when nobody
  waited), which under contention costs a store to a second line.
- ``padded``: each group on a cache line of its own: the lock words (head
  ``D_LOCK_HEAD``, tail ``D_LOCK_TAIL``, mcs tail, tas word, owner, handoff
  stamps) on one, ``D_CURSOR``, ``D_EPOCH`` and ``D_TLBFLUSH_TS`` on one each.
  Kept for comparison (``scripts/bench.py`` shows both).

In both, the words only a contended lock touches stay on lines of their own:
the tas waiter count (``D_TAS_WAITERS``) and the mcs nodes (``D_MCS_NODES``,
one line per vCPU).

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

from .. import abi, tlb
from .contract import domain_vcpus
from ..atomics import (cas, cpu_relax, exchange, fetch_add, fetch_and, fetch_or, load_acquire, lowest_bit, rdtsc,
                       store_release, store_release_lo32)
from ..irq import irq_point, irq_restore, irq_save

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
LOCKS = ("ticket", "mcs", "tas")
LOCK_TICKET, LOCK_MCS, LOCK_TAS = 0, 1, 2
TAS_BACKOFF_MAX = 256           # PAUSE rounds: the bound of the tas lock's exponential backoff

# The domain words (dom[...]) in two layouts, chosen with --dom-layout (DOM_LAYOUTS; the kernel
# reads the index from p[P_DOM_LAYOUT]). tlb.D_TLBCLOCK, the TLB clock, is word 0 in both.
DOM_LAYOUTS = ("xen", "padded")
LAYOUT_XEN, LAYOUT_PADDED = 0, 1

# "xen": struct mapcache_domain's words on one cache line, the ticket lock one word.
X_CURSOR = 8
X_LOCK = 9             # ticket: head in the low 32 bits, tail in the high 32; mcs: its tail; tas: its word
X_EPOCH = 10
X_TLBFLUSH_TS = 11
X_LOCK_OWNER = 16      # the testbed's own words, off the hot line (Xen's struct has none of them)
X_HANDOFF_TSC = 17
X_HANDOFF_FROM = 18
TICKET_ONE = 1 << 32   # one ticket: the fetch-and-add that takes it adds 1 to the tail half
TICKET_MASK = 0xFFFFFFFF

# "padded": each group on its own cache line, head and tail two words.
D_LOCK_HEAD = 8
D_LOCK_TAIL = 9
D_LOCK_OWNER = 10      # vcpu + 1 of the holder, 0 when free: for stall reports, not for the algorithm
D_MCS_TAIL = 11        # mcs: vcpu + 1 of the last node queued, 0 when free
D_TAS = 12             # tas: 1 while held
D_HANDOFF_TSC = 13     # cycle counter at a release that had waiters, 0 once the next holder took it
D_HANDOFF_FROM = 14    # ... vcpu + 1 of the vCPU that released then
D_CURSOR = 16
D_EPOCH = 24
D_TLBFLUSH_TS = 32

# Both layouts: the words only a contended lock touches, each on lines of their own.
D_TAS_WAITERS = 40     # tas: vCPUs backing off (on its own line: waiters write it, the holder reads it)
D_MCS_NODES = 48       # mcs: vCPU v's node {next, locked} at D_MCS_NODES + 8 * v, one line each
N_NEXT = 0             # vcpu + 1 of the successor, 0 while none has linked
N_LOCKED = 1           # 1 while the owner waits for its predecessor's handoff
DOM_WORDS = D_MCS_NODES


def dom_words(layout: str, lock: str = "ticket") -> dict:
    """Where each domain word of ``layout`` (a DOM_LAYOUTS name) is, for ``lock``: the offsets the
    kernels use (``domain_words``, ``lock_word``, ``owner_words``), by name."""
    if layout == "xen":
        return {"cursor": X_CURSOR, "lock": X_LOCK, "epoch": X_EPOCH, "tlbflush_ts": X_TLBFLUSH_TS,
                "owner": X_LOCK_OWNER, "handoff_tsc": X_HANDOFF_TSC, "handoff_from": X_HANDOFF_FROM}
    lw = {"mcs": D_MCS_TAIL, "tas": D_TAS}.get(lock, D_LOCK_HEAD)
    return {"cursor": D_CURSOR, "lock": lw, "epoch": D_EPOCH, "tlbflush_ts": D_TLBFLUSH_TS,
            "owner": D_LOCK_OWNER, "handoff_tsc": D_HANDOFF_TSC, "handoff_from": D_HANDOFF_FROM}


@inline_kernel
def domain_words(layout):
    """(cursor, epoch, TLB flush timestamp) of layout ``layout`` (LAYOUT_*)."""
    if layout == LAYOUT_XEN:
        return X_CURSOR, X_EPOCH, X_TLBFLUSH_TS
    return D_CURSOR, D_EPOCH, D_TLBFLUSH_TS


@inline_kernel
def lock_word(layout, kind):
    """The lock's word: the ticket word (xen) or the head (padded; the tail is the next), the mcs tail,
    the tas word."""
    if layout == LAYOUT_XEN:
        return X_LOCK
    if kind == LOCK_MCS:
        return D_MCS_TAIL
    if kind == LOCK_TAS:
        return D_TAS
    return D_LOCK_HEAD


@inline_kernel
def owner_words(layout):
    """(owner, handoff stamp, handoff releaser) of layout ``layout``."""
    if layout == LAYOUT_XEN:
        return X_LOCK_OWNER, X_HANDOFF_TSC, X_HANDOFF_FROM
    return D_LOCK_OWNER, D_HANDOFF_TSC, D_HANDOFF_FROM


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
def lock(dom, srow, vcpu):
    """The ticket lock of the xen layout, as Xen's ``spin_lock``: the ticket taken (pass it to ``unlock``).

    One fetch-and-add of TICKET_ONE takes the ticket (the tail half of the old word) and reads the
    head (its low half) in the same instruction: when they are equal the lock is taken with no
    further load. Tickets compare modulo 2**32; the tail wraps off the top of the 64-bit word,
    carrying into nothing.
    """
    t = fetch_add(dom, X_LOCK, TICKET_ONE)
    my = (t >> 32) & TICKET_MASK
    srow[abi.S_LOCK_ACQ] += 1
    if (t & TICKET_MASK) != my:
        srow[abi.S_LOCK_CONTENDED] += 1
        t0 = rdtsc()
        while (load_acquire(dom, X_LOCK) & TICKET_MASK) != my:
            cpu_relax()
            srow[abi.S_PROGRESS] += 1      # alive, if waiting
        srow[abi.S_LOCK_SPIN] += rdtsc() - t0
    dom[X_LOCK_OWNER] = vcpu + 1
    return my


@kernel
def unlock(dom, my):
    """Xen's ``spin_unlock``: ``add_sized(&head, 1)``. Only the holder writes the head, and it knows
    the head is its ticket, so it stores ticket + 1 into the low half alone (a release store of 4
    bytes, a plain mov on x86 as Xen's 16-bit add is): head wraps at 2**32 without carrying into
    the tail, and the tail the others fetch-and-add at the same time is not touched. A 64-bit
    fetch_add(1) would carry when the head wraps, and a CAS loop would retry under every ticket
    taken meanwhile."""
    dom[X_LOCK_OWNER] = 0
    store_release_lo32(dom, X_LOCK, my + 1)


@kernel
def ticket_halves(w):
    """(head, tail) of a xen-layout ticket word, each modulo 2**32."""
    return w & TICKET_MASK, (w >> 32) & TICKET_MASK


@kernel
def mcs_node(vcpu):
    return D_MCS_NODES + 8 * vcpu


@kernel
def mcs_lock(dom, srow, vcpu, lw, own):
    node = mcs_node(vcpu)
    srow[abi.S_LOCK_ACQ] += 1
    dom[node + N_NEXT] = 0
    dom[node + N_LOCKED] = 1
    pred = exchange(dom, lw, vcpu + 1)      # a full barrier: the node is ready before it is seen
    if pred != 0:
        srow[abi.S_LOCK_CONTENDED] += 1
        t0 = rdtsc()
        store_release(dom, mcs_node(pred - 1) + N_NEXT, vcpu + 1)
        while load_acquire(dom, node + N_LOCKED) != 0:
            cpu_relax()
            srow[abi.S_PROGRESS] += 1
        srow[abi.S_LOCK_SPIN] += rdtsc() - t0
    else:
        dom[node + N_LOCKED] = 0       # own line: only stall reports read it (a waiter has it at 1)
    dom[own] = vcpu + 1


@kernel
def mcs_successor(dom, srow, vcpu, lw):
    """The successor to hand over to (vcpu + 1), or 0 once the tail was swung back to empty."""
    node = mcs_node(vcpu)
    nxt = load_acquire(dom, node + N_NEXT)
    if nxt == 0:
        if cas(dom, lw, vcpu + 1, 0) == vcpu + 1:
            return 0
        while nxt == 0:                # a successor swapped itself in and is about to link
            cpu_relax()
            srow[abi.S_PROGRESS] += 1  # alive, if waiting (the successor may be preempted there)
            nxt = load_acquire(dom, node + N_NEXT)
    return nxt


@kernel
def tas_try(dom, lw):
    return load_acquire(dom, lw) == 0 and exchange(dom, lw, 1) == 0


@kernel
def tas_lock(dom, srow, vcpu, lw, own):
    srow[abi.S_LOCK_ACQ] += 1
    if not tas_try(dom, lw):
        srow[abi.S_LOCK_CONTENDED] += 1
        t0 = rdtsc()
        fetch_add(dom, D_TAS_WAITERS, 1)
        delay = 1
        while True:
            for _ in range(delay):
                cpu_relax()
            srow[abi.S_PROGRESS] += 1
            if tas_try(dom, lw):
                break
            delay = min(2 * delay, TAS_BACKOFF_MAX)
        fetch_add(dom, D_TAS_WAITERS, -1)
        srow[abi.S_LOCK_SPIN] += rdtsc() - t0
    dom[own] = vcpu + 1


@kernel
def acquire(dom, srow, vcpu, kind, layout):
    """Take the domain lock of kind ``kind`` (LOCK_*) in domain layout ``layout`` (LAYOUT_*); a token
    for ``release`` (the ticket)."""
    lw = lock_word(layout, kind)
    own, hts, hfrom = owner_words(layout)
    my = 0
    if kind == LOCK_MCS:
        mcs_lock(dom, srow, vcpu, lw, own)
    elif kind == LOCK_TAS:
        tas_lock(dom, srow, vcpu, lw, own)
    elif layout == LAYOUT_XEN:         # the ticket lock, as lock() (written out: no call on the hot path)
        t = fetch_add(dom, lw, TICKET_ONE)
        my = (t >> 32) & TICKET_MASK
        srow[abi.S_LOCK_ACQ] += 1
        if (t & TICKET_MASK) != my:
            srow[abi.S_LOCK_CONTENDED] += 1
            t0 = rdtsc()
            while (load_acquire(dom, lw) & TICKET_MASK) != my:
                cpu_relax()
                srow[abi.S_PROGRESS] += 1
            srow[abi.S_LOCK_SPIN] += rdtsc() - t0
        dom[own] = vcpu + 1
    else:                              # padded: head and tail two words
        my = fetch_add(dom, lw + 1, 1)
        srow[abi.S_LOCK_ACQ] += 1
        if load_acquire(dom, lw) != my:
            srow[abi.S_LOCK_CONTENDED] += 1
            t0 = rdtsc()
            while load_acquire(dom, lw) != my:
                cpu_relax()
                srow[abi.S_PROGRESS] += 1
            srow[abi.S_LOCK_SPIN] += rdtsc() - t0
        dom[own] = vcpu + 1
    t_rel = dom[hts]
    if t_rel != 0:                     # released to waiters: time the handoff
        dom[hts] = 0
        if dom[hfrom] == vcpu + 1:
            srow[abi.S_LOCK_REACQ] += 1    # the releaser took it back before a waiter did
        else:
            dt = rdtsc() - t_rel
            if dt >= 0:
                srow[abi.S_HANDOFFS] += 1
                srow[abi.S_HANDOFF_CYCLES] += dt
    return my


@kernel
def release(dom, my, srow, t_hold, vcpu, kind, layout):
    """Unlock; account the hold time when it was measured (t_hold != 0)."""
    lw = lock_word(layout, kind)
    own, hts, hfrom = owner_words(layout)
    if t_hold != 0:
        srow[abi.S_LOCK_HOLD] += rdtsc() - t_hold
        srow[abi.S_LOCK_HOLD_SAMPLES] += 1
    if kind == LOCK_MCS:
        dom[own] = 0
        nxt = mcs_successor(dom, srow, vcpu, lw)
        if nxt != 0:
            dom[hfrom] = vcpu + 1
            dom[hts] = rdtsc()
            store_release(dom, mcs_node(nxt - 1) + N_LOCKED, 0)
    elif kind == LOCK_TAS:
        dom[own] = 0
        if load_acquire(dom, D_TAS_WAITERS) > 0:
            dom[hfrom] = vcpu + 1
            dom[hts] = rdtsc()
        store_release(dom, lw, 0)
    elif layout == LAYOUT_XEN:
        if ((load_acquire(dom, lw) >> 32) & TICKET_MASK) != ((my + 1) & TICKET_MASK):
            dom[hfrom] = vcpu + 1      # a ticket was taken after mine: a waiter
            dom[hts] = rdtsc()
        dom[own] = 0                   # unlock(), written out
        store_release_lo32(dom, lw, my + 1)
    else:
        if load_acquire(dom, lw + 1) != my + 1:
            dom[hfrom] = vcpu + 1
            dom[hts] = rdtsc()
        dom[own] = 0
        store_release(dom, lw, my + 1)


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


def _lock_kind(cfg) -> int:
    return LOCKS.index(cfg.lock) if cfg.lock in LOCKS else LOCK_TICKET


def _layout(cfg) -> str:
    return getattr(cfg, "dom_layout", None) or DOM_LAYOUTS[0]


def _words(cfg) -> dict:
    return dom_words(_layout(cfg), LOCKS[_lock_kind(cfg)])


def ticket_snapshot(views, cfg) -> tuple[int, int]:
    """(head, tail) of the ticket lock, as one consistent snapshot.

    xen layout: one read of the one word gives both, so ``tail - head`` (modulo 2**32) is the
    tickets outstanding at one instant: at most one per vCPU. padded layout: the tail read
    between two equal readings of the head (the head only grows), so that a holder that keeps
    taking the lock cannot inflate the count.
    """
    dom, w = views["dom"], _words(cfg)
    if _layout(cfg) == "xen":
        word = int(dom[w["lock"]]) & 0xFFFF_FFFF_FFFF_FFFF
        return word & TICKET_MASK, word >> 32
    for _ in range(1000):
        head = int(dom[w["lock"]])
        tail = int(dom[w["lock"] + 1])
        if int(dom[w["lock"]]) == head:
            break
    return head, tail


def lock_waiters(views, cfg) -> int:
    """vCPUs waiting for the lock now."""
    dom = views["dom"]
    kind = _lock_kind(cfg)
    if kind == LOCK_MCS:
        return sum(1 for v in range(cfg.vcpus) if dom[mcs_node(v) + N_LOCKED] != 0)
    if kind == LOCK_TAS:
        return max(0, int(dom[D_TAS_WAITERS]))
    head, tail = ticket_snapshot(views, cfg)
    return max(0, ((tail - head) & TICKET_MASK) - 1)


def lock_free(views, cfg) -> bool:
    dom, w = views["dom"], _words(cfg)
    kind = _lock_kind(cfg)
    if kind == LOCK_MCS:
        free = dom[w["lock"]] == 0
    elif kind == LOCK_TAS:
        free = dom[w["lock"]] == 0 and dom[D_TAS_WAITERS] == 0
    else:
        head, tail = ticket_snapshot(views, cfg)
        free = head == tail
    return bool(free and dom[w["owner"]] == 0)


def lock_holder(views, cfg):
    owner = int(views["dom"][_words(cfg)["owner"]])
    return owner - 1 if owner else None


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
