"""A simulated TLB, one per vCPU process and private to it, and Xen's TLB clock.

The TLB caches translations of mapcache slots (a slot is one virtual page) to
machine frames. It is set-associative: ``sets * ways`` entries with ``sets`` a power of two, a
slot goes to set ``slot & (sets - 1)`` (the low bits of the virtual page
number, as in hardware, and no division on the hot path).
Replacement is least-recently-used within the set: each entry records the value
of a per-TLB tick when it was last used, and a fill takes an invalid way if
there is one, else the way with the smallest tick.

A miss walks the shared page table: an acquire load of the slot's L1 entry,
which another vCPU may be writing at that moment. A non-present entry is a
page fault, reported to the caller as -1. ``flush_one`` drops one slot's entry
(``invlpg``); ``flush_all`` drops every entry (a CR3 write) and ticks the TLB
clock exactly as Xen's ``pre_flush`` / ``post_flush`` do.

The cost model spins for a configurable number of cycles on each walk, single
flush and full flush, because the simulated TLB itself is nearly free while the
real operations are not, and the old design (batched full flushes) and the new
one (an ``invlpg`` per slot reuse) differ precisely there. Defaults, in cycles,
are orders of magnitude from published measurements and can be set to 0:

- single-entry flush (``invlpg``): 200. Amit, "Optimizing the TLB Shootdown
  Algorithm with Page-Access Tracking" (USENIX ATC 2017) measures a local
  INVLPG at roughly 100-250 cycles on Haswell/Broadwell.
- full local flush (CR3 reload without PCID): 500, same source; the refill
  misses that follow are paid separately through the walk cost.
- page walk on a miss: 30. Bhattacharjee & Lustig, "Architectural and Operating
  System Support for Virtual Memory" (2017): a walk that hits the paging-
  structure caches and the data caches costs a few tens of cycles.
- refill after a full flush: 64 guest accesses, each one walk. A real full
  flush drops every translation, not only the mapcache slots this TLB holds:
  the guest's and the hypervisor's own pages must be walked again as they are
  touched. 64 is the first-level data TLB's 4 KiB entries on the cores the
  testbed's figures come from (Intel Skylake to Ice Lake, AMD Zen 2 to Zen 4:
  64 entries, in Intel's Optimization Reference Manual and AMD's Software
  Optimization Guides), i.e. what the flush takes from a guest whose working
  set fills that level; it is also ``--tlb-entries``' default. The next
  ``--cost-refill`` accesses after a flush each pay ``--cost-walk`` cycles
  (counted in ``S_REFILLS``); 0 turns it off.

The guest's own pages (``--guest-pages G``, hypercall workloads): before each
hypercall the guest touches G pages of its own through this same TLB
(``touch_guest``), as tags apart from every mapcache slot (``GUEST_TAG`` +
page), so that they compete with the slots for entries and a full flush drops
them too: the guest's next pass pays a walk for each one the flush (or an
eviction) took, up to the TLB's entries, whoever touches them first. With G > 0
the ``--cost-refill`` charge is not made (``config.params`` sets it to 0): the
TLB itself now charges what the flush dropped. Default 64, the first-level
dTLB's 4 KiB entries named above: a guest whose working set fills that level.

PCID (``--pcid``): ``flush_area_local`` in Xen's ``flushtlb.c`` turns a
one-page flush into ``invlpg`` with CR4.PCIDE clear, two ``INVPCID``s (the
guest's kernel and user PCIDs) with it set, and four under XPTI (the same two
again for XPTI's PCIDs). ``config.params`` folds the choice into the one-slot
flush's cost (``P_COST_FLUSH_ONE`` = 2 or 4 times ``--cost-invpcid``), so the
loop is unchanged; ``docs/cost-model.md`` gives the figures.

Simplification: the 32-bit clock's wrap to 0 (Xen then flushes every CPU) is
modelled by restarting the clock at 1 without flushing the other vCPUs; at one
full flush per microsecond it takes over an hour to reach.
"""

import numpy as np
from .jit import kernel

from . import abi
from .atomics import cas, load_acquire, rdtsc

COST_FLUSH_ONE = 200
COST_FLUSH_ALL = 500
COST_WALK = 30
COST_REFILL = 64
COST_INVPCID = 350       # cycles per INVPCID (individual address): docs/cost-model.md
GUEST_PAGES = 64         # the guest's own pages touched before each hypercall: docs/cost-model.md
GUEST_TAG = 1 << 32      # TLB tag of guest page 0: above every mapcache slot + 1
PCID_MODES = {"off": 1, "on": 2, "xpti": 4}      # flushes per one-page flush_area_local (1: invlpg, else INVPCIDs)

T_TAG = 0      # slot + 1; 0 means invalid
T_PFN = 1
T_AGE = 2
T_COLS = 3

PTE_PRESENT = np.int64(1) << np.int64(62)
PTE_MFN_MASK = PTE_PRESENT - np.int64(1)

# Domain words used by the clock (dom[...]); each on its own cache line.
D_TLBCLOCK = 0
CLOCK_MASK = 0xFFFFFFFF


def make_tlb(sets: int, ways: int) -> np.ndarray:
    """A private TLB: sets * ways entries of T_COLS words, plus a last one whose first word is the LRU tick.

    One flat array, entry ``w`` at words ``w * T_COLS`` onwards: a 2-D array would make
    every access multiply by a row length read at run time, where this is a constant.
    """
    return np.zeros((sets * ways + 1) * T_COLS, dtype=np.int64)


@kernel
def word(w, col):
    """Index of column ``col`` of entry ``w`` (w >= 0), unsigned: no negative-index wraparound code."""
    return np.uint64(w * T_COLS + col)


@kernel
def spin_cycles(cycles):
    if cycles <= 0:
        return
    t0 = rdtsc()
    while rdtsc() - t0 < cycles:
        pass


@kernel
def translate(tlb, p, pte, slot, srow):
    """Machine frame that ``slot`` maps to, through the TLB; -1 if not present."""
    ways = p[abi.P_TLB_WAYS]
    base = (slot & (p[abi.P_TLB_SETS] - 1)) * ways
    meta = np.uint64(tlb.size - T_COLS)
    tick = tlb[meta] + 1
    tlb[meta] = tick
    victim = base
    oldest = np.int64(1) << np.int64(62)
    for w in range(base, base + ways):
        tag = tlb[word(w, T_TAG)]
        if tag == slot + 1:
            tlb[word(w, T_AGE)] = tick
            srow[abi.S_TLB_HITS] += 1
            return tlb[word(w, T_PFN)]
        age = -1 if tag == 0 else tlb[word(w, T_AGE)]   # an invalid way is taken first
        if age < oldest:
            oldest = age
            victim = w
    srow[abi.S_TLB_MISSES] += 1
    if p[abi.P_COST_WALK] > 0:
        spin_cycles(p[abi.P_COST_WALK])
    e = load_acquire(pte, slot)
    if (e & PTE_PRESENT) == 0:
        return -1
    pfn = e & PTE_MFN_MASK
    tlb[word(victim, T_TAG)] = slot + 1
    tlb[word(victim, T_PFN)] = pfn
    tlb[word(victim, T_AGE)] = tick
    return pfn


@kernel
def peek(tlb, p, pte, slot):
    """The frame an access to ``slot`` would reach now, for the oracle: -1 if none.

    What ``translate`` returns, without its side effects: no LRU tick, no fill,
    no counter, no cost. The oracle looks; it must not change what it looks at.
    """
    ways = p[abi.P_TLB_WAYS]
    base = (slot & (p[abi.P_TLB_SETS] - 1)) * ways
    for w in range(base, base + ways):
        if tlb[word(w, T_TAG)] == slot + 1:
            return tlb[word(w, T_PFN)]
    e = load_acquire(pte, slot)
    if (e & PTE_PRESENT) == 0:
        return -1
    return e & PTE_MFN_MASK


@kernel
def flush_one(tlb, p, slot, srow):
    """invlpg: drop the entry for one slot, if cached."""
    ways = p[abi.P_TLB_WAYS]
    base = (slot & (p[abi.P_TLB_SETS] - 1)) * ways
    for w in range(base, base + ways):
        if tlb[word(w, T_TAG)] == slot + 1:
            tlb[word(w, T_TAG)] = 0
    srow[abi.S_FLUSH_ONE] += 1
    if p[abi.P_COST_FLUSH_ONE] > 0:
        spin_cycles(p[abi.P_COST_FLUSH_ONE])


@kernel
def touch_guest(tlb, p, page, srow):
    """The guest touching its own page ``page`` through the TLB: a hit, or a walk and a fill.

    The page's tag is ``GUEST_TAG + page`` in set ``page & (sets - 1)``; its
    translation is the guest's business, so a miss pays the walk and fills the
    entry without reading the arena's page table.
    """
    ways = p[abi.P_TLB_WAYS]
    base = (page & (p[abi.P_TLB_SETS] - 1)) * ways
    tag = GUEST_TAG + page
    meta = np.uint64(tlb.size - T_COLS)
    tick = tlb[meta] + 1
    tlb[meta] = tick
    victim = base
    oldest = np.int64(1) << np.int64(62)
    srow[abi.S_GUEST_TOUCHES] += 1
    for w in range(base, base + ways):
        t = tlb[word(w, T_TAG)]
        if t == tag:
            tlb[word(w, T_AGE)] = tick
            return
        age = -1 if t == 0 else tlb[word(w, T_AGE)]
        if age < oldest:
            oldest = age
            victim = w
    srow[abi.S_GUEST_WALKS] += 1
    if p[abi.P_COST_WALK] > 0:
        spin_cycles(p[abi.P_COST_WALK])
    tlb[word(victim, T_TAG)] = tag
    tlb[word(victim, T_PFN)] = page
    tlb[word(victim, T_AGE)] = tick


@kernel
def refill(p, srow):
    """One guest access after a full flush: the walk that refills an entry the flush dropped."""
    srow[abi.S_REFILL_LEFT] -= 1
    srow[abi.S_REFILLS] += 1
    if p[abi.P_COST_WALK] > 0:
        spin_cycles(p[abi.P_COST_WALK])


@kernel
def clock_now(dom):
    return load_acquire(dom, D_TLBCLOCK)


@kernel
def pre_flush(dom):
    """Advance the TLB clock by compare-and-swap; the new time, or 0 while it wraps."""
    while True:
        t1 = load_acquire(dom, D_TLBCLOCK)
        if t1 == 0:
            return 0
        t2 = (t1 + 1) & CLOCK_MASK
        if cas(dom, D_TLBCLOCK, t1, t2) == t1:
            if t2 == 0:
                cas(dom, D_TLBCLOCK, 0, 1)
            return t2


@kernel
def flush_all(tlb, p, dom, vrow, srow):
    """Full local flush: tick the clock, drop every entry, record this CPU's flush time."""
    t = pre_flush(dom)
    n = tlb.size // T_COLS - 1
    for w in range(n):
        tlb[word(w, T_TAG)] = 0
    vrow[abi.V_TLBFLUSH_TIME] = t
    srow[abi.S_FLUSH_ALL] += 1
    srow[abi.S_REFILL_LEFT] = p[abi.P_COST_REFILL]      # what else the flush dropped is walked again
    if p[abi.P_COST_FLUSH_ALL] > 0:
        spin_cycles(p[abi.P_COST_FLUSH_ALL])


@kernel
def need_flush(cpu_stamp, lastuse, now):
    """Xen's NEED_FLUSH: has this CPU not flushed since ``lastuse``?"""
    if now == 0:
        return True
    return cpu_stamp <= lastuse and lastuse <= now
