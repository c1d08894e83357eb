"""Where a domain's shared words sit (``dom[...]``): two layouts, chosen with ``--dom-layout``.

A design with a domain-wide lock and cursor (today ``locked``) lists ``DOM_LAYOUTS`` as its
layouts; the kernel reads the chosen one's index from ``p[abi.P_DOM_LAYOUT]``. Compiled code
that takes the layout as a constant (``locked.map_slow`` is inlined once per layout) folds
these offsets into its instructions, so the choice costs one branch per operation.
Word 0 is the global TLB clock (``tlb.D_TLBCLOCK``) in both.

- ``xen`` (default), as Xen's ``struct mapcache_domain`` (xen/arch/x86/include/asm/domain.h:
  ``entries``, ``cursor``, ``spinlock_t lock``, ``epoch``, ``tlbflush_timestamp``):
  ``cursor``, the lock word, ``epoch`` and ``tlbflush_timestamp`` on one cache line (words
  8..11: ``X_CURSOR``, ``X_LOCK``, ``X_EPOCH``, ``X_TLBFLUSH_TS``), so the slow path's critical
  section touches one shared line besides the bitmaps. The lock word is the ticket word (head
  and tail in one word, as Xen's ``spinlock_tickets_t``), or the mcs tail, or the tas word,
  whichever lock runs (testbed/locks.py). The owner word (stall reports) and the handoff
  stamps are the testbed's, not Xen's: they sit on the next line (``X_LOCK_OWNER``,
  ``X_HANDOFF_TSC``, ``X_HANDOFF_FROM``), so the hot line holds what Xen's does and nothing a
  stall report or the handoff timing needs; the owner is written on every acquisition and
  release (a stopped holder must be named even when nobody waited), which under contention
  costs a store to a second line.
- ``padded``: each group on a cache line of its own: the lock words (ticket head
  ``D_LOCK_HEAD``, tail ``D_LOCK_TAIL``, mcs tail, tas word, owner, handoff stamps) on one,
  ``D_CURSOR``, ``D_EPOCH`` and ``D_TLBFLUSH_TS`` on one each. Kept for comparison
  (``scripts/bench.py`` shows both).

In both, the words only a contended lock touches stay on lines of their own: the tas waiter
count (``D_TAS_WAITERS``) and the mcs nodes (``D_MCS_NODES``, one line per vCPU, after which a
design's own per-domain words may follow).
"""

from .jit import kernel

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
D_MCS_NODES = 48       # mcs: vCPU v's node at D_MCS_NODES + 8 * v, one line each
DOM_WORDS = D_MCS_NODES     # the fixed words; a domain of d vCPUs needs DOM_WORDS + 8 * d


def mapcache_words(layout: str) -> dict:
    """The cursor, epoch and TLB flush stamp of ``layout`` (a DOM_LAYOUTS name), by name."""
    if layout == "xen":
        return {"cursor": X_CURSOR, "epoch": X_EPOCH, "tlbflush_ts": X_TLBFLUSH_TS}
    return {"cursor": D_CURSOR, "epoch": D_EPOCH, "tlbflush_ts": D_TLBFLUSH_TS}


@kernel
def domain_words(layout):
    """(cursor, epoch, TLB flush timestamp) of layout ``layout`` (LAYOUT_*)."""
    if layout == LAYOUT_XEN:
        return X_CURSOR, X_EPOCH, X_TLBFLUSH_TS
    return D_CURSOR, D_EPOCH, D_TLBFLUSH_TS
