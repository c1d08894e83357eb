"""The spinlocks a design can run under (``--lock``): Xen's ticket lock, an MCS queue lock, and a
test-and-test-and-set lock with backoff.

A lock here is what it is in lockhammer: an acquire and a release, plus its layout, the words
it keeps among the domain's (testbed/dom_layout.py, ``--dom-layout``). ``acquire(dom, srow,
vcpu, kind, layout)`` takes the lock of kind ``kind`` (``LOCK_*``, the index in ``LOCKS`` a
design reads from ``p[abi.P_LOCK]``) in layout ``layout`` (``LAYOUT_*``) and returns a token
for ``release(dom, my, srow, t_hold, vcpu, kind, layout)`` (the ticket; 0 for the others).
Both are compiled kernels taking arrays and integers only, so that a design calls them with
its layout a constant and the numba cache keeps working; a design lists ``LOCKS`` as its own.
Every lock counts in the caller's stats row (testbed/abi.py): ``S_LOCK_ACQ`` per acquisition,
``S_LOCK_CONTENDED`` per one that had to wait, the cycles waited in ``S_LOCK_SPIN``, and one
``S_PROGRESS`` per spin round (the watchdog's pulse: a waiter is alive).

- ``ticket`` (default; Xen's, and the only one of the three Xen has): FIFO, PAUSE in the spin,
  no backoff, no sleeping. Every waiter spins on the one line the holder writes when it
  releases. Xen (xen/common/spinlock.c; line numbers of head/ c447b7308b, seed-base/
  af01d330cb in brackets) packs ``{u16 head, tail}`` into one 32-bit word
  (``spinlock_tickets_t``, xen/include/xen/spinlock.h:194); ``spin_lock_common`` (line 313;
  ``_spin_lock_cb``, 157) takes a ticket with one ``arch_fetch_and_add`` of
  ``SPINLOCK_TICKET_INC`` to the whole word (323; 163), whose old value holds the ticket and
  the head, and spins on ``observe_head`` (324; 165) with ``arch_lock_relax`` (PAUSE);
  ``spin_unlock_common`` (365; ``_spin_unlock``, 199) is ``add_sized(&t->head, 1)`` (370;
  205). ``ticket_lock`` / ``ticket_unlock`` do the same on one 64-bit word with 32-bit halves
  (the xen layout's ``X_LOCK``): the fetch-and-add of ``TICKET_ONE`` gives the ticket and the
  head in one instruction (equal: taken, no further load); the release stores ticket + 1
  into the head half alone, so the head wraps at 2**32 without carrying into the tail, and
  tickets compare modulo 2**32. In the padded layout head and tail are two words
  (``split_ticket_lock``). testbed/csrc/ticket_lock.h is the same lock in C, for the C port and
  the Xen shim. Left out: Xen's lock debugging, lock profiling and preemption count.
- ``mcs`` (not Xen's: Mellor-Crummey and Scott, "Algorithms for scalable synchronization on
  shared-memory multiprocessors", ACM TOCS 9(1), 1991; Linux's kernel/locking/mcs_spinlock.h
  is the same queue): per-vCPU nodes ``{next, locked}``. A vCPU swaps its node into the tail;
  if there was a predecessor it links itself behind it and spins on its *own* node, which
  only its predecessor writes, once, to hand the lock over: local spinning, one cache-line
  transfer per handoff. Release hands over to ``next``, or swings the tail back to empty by
  compare-and-swap, waiting for a successor that has swapped itself in but not linked yet.
  The nodes live in the domain words after ``D_MCS_NODES``, one cache line per vCPU, laid
  out by ownership.
- ``tas`` (not Xen's: test-and-test-and-set with bounded exponential backoff, as in Anderson,
  "The performance of spin lock alternatives for shared-memory multiprocessors", IEEE TPDS
  1(1), 1990): read the word until it looks free, then exchange 1 into it; on failure PAUSE for
  a delay that doubles up to ``TAS_BACKOFF_MAX`` rounds (the testbed's choice). No order:
  whoever swaps first wins, so a vCPU can take the lock again and again while others back off
  (unfair), and a lock freed during everyone's backoff stays idle (slow handoff).

Handoff cost and fairness. A releaser that knows vCPUs are waiting (ticket: the tail is past
the next ticket; mcs: it has a successor; tas: the count of backing-off waiters, bumped once
per contended acquisition, is non-zero) stamps the cycle counter and itself into the
handoff words (``owner_words``) just before it releases; the next holder adds the cycles since
that stamp to ``S_HANDOFF_CYCLES`` and clears it, or, when it is the releaser itself taking the
lock back ahead of the waiters (tas only: the queue locks cannot), counts ``S_LOCK_REACQ``.
Both happen under the lock. The spread of ``S_LOCK_ACQ`` across vCPUs is the fairness the
results report. The owner word (vcpu + 1 of the holder) is written on every acquisition and
release, for stall reports and for a design's deadlock check (an NMI handler reaching the
lock its own CPU holds).

The Python readers below (``ticket_snapshot``, ``waiters``, ``is_free``, ``holder``) read a live
or a finished domain for stall reports and invariant checks.

TODO: the lock's words are fixed by the two domain layouts; a design with another layout of its
own words would add a layout here rather than pass the lock its words.
"""

from . import abi
from .atomics import cas, cpu_relax, exchange, fetch_add, load_acquire, rdtsc, store_release, store_release_lo32
from .dom_layout import (D_HANDOFF_FROM, D_HANDOFF_TSC, D_LOCK_HEAD, D_LOCK_OWNER, D_MCS_NODES, D_MCS_TAIL, D_TAS,
                         D_TAS_WAITERS, LAYOUT_XEN, X_HANDOFF_FROM, X_HANDOFF_TSC, X_LOCK,
                         X_LOCK_OWNER)
from .jit import kernel

LOCKS = ("ticket", "mcs", "tas")
LOCK_TICKET, LOCK_MCS, LOCK_TAS = 0, 1, 2
TAS_BACKOFF_MAX = 256   # PAUSE rounds: the bound of the tas lock's exponential backoff
TICKET_ONE = 1 << 32    # one ticket: the fetch-and-add that takes it adds 1 to the tail half
TICKET_MASK = 0xFFFFFFFF
N_NEXT = 0              # an mcs node: vcpu + 1 of the successor, 0 while none has linked
N_LOCKED = 1            # ... 1 while the owner waits for its predecessor's handoff


def words(layout: str, lock: str = "ticket") -> dict:
    """Where the words of ``lock`` are in ``layout`` (a DOM_LAYOUTS name), by name: the offsets the
    kernels use (``lock_word``, ``owner_words``)."""
    if layout == "xen":
        return {"lock": X_LOCK, "owner": X_LOCK_OWNER, "handoff_tsc": X_HANDOFF_TSC, "handoff_from": X_HANDOFF_FROM}
    lw = {"mcs": D_MCS_TAIL, "tas": D_TAS}.get(lock, D_LOCK_HEAD)
    return {"lock": lw, "owner": D_LOCK_OWNER, "handoff_tsc": D_HANDOFF_TSC, "handoff_from": D_HANDOFF_FROM}


@kernel
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


@kernel
def owner_words(layout):
    """(owner, handoff stamp, handoff releaser) of layout ``layout``."""
    if layout == LAYOUT_XEN:
        return X_LOCK_OWNER, X_HANDOFF_TSC, X_HANDOFF_FROM
    return D_LOCK_OWNER, D_HANDOFF_TSC, D_HANDOFF_FROM


# --- ticket, one word (the xen layout): Xen's spin_lock / spin_unlock ---------------------------

@kernel
def ticket_lock(dom, srow, lw):
    """Xen's ``spin_lock`` on the word ``dom[lw]``: the ticket taken (pass it to ``ticket_unlock``).

    One fetch-and-add of TICKET_ONE takes the ticket (the tail half of the old word) and reads the
    head (its low half) in the same instruction: when they are equal the lock is taken with no
    further load. The tail wraps off the top of the 64-bit word, carrying into nothing.
    """
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
    return my


@kernel
def ticket_waiters(dom, lw, my):
    """Whether a ticket was taken after ``my``: someone waits for the release."""
    return ((load_acquire(dom, lw) >> 32) & TICKET_MASK) != ((my + 1) & TICKET_MASK)


@kernel
def ticket_unlock(dom, lw, my):
    """Xen's ``spin_unlock``: ``add_sized(&head, 1)``. Only the holder writes the head, and it knows
    the head is its ticket, so it stores ticket + 1 into the low half alone (a release store of 4
    bytes, a plain mov on x86 as Xen's 16-bit add is): head wraps at 2**32 without carrying into
    the tail, and the tail the others fetch-and-add at the same time is not touched. A 64-bit
    fetch_add(1) would carry when the head wraps, and a CAS loop would retry under every ticket
    taken meanwhile."""
    store_release_lo32(dom, lw, my + 1)


# --- ticket, two words (the padded layout): head at lw, tail at lw + 1 ---------------------------

@kernel
def split_ticket_lock(dom, srow, lw):
    my = fetch_add(dom, lw + 1, 1)
    srow[abi.S_LOCK_ACQ] += 1
    if load_acquire(dom, lw) != my:
        srow[abi.S_LOCK_CONTENDED] += 1
        t0 = rdtsc()
        while load_acquire(dom, lw) != my:
            cpu_relax()
            srow[abi.S_PROGRESS] += 1
        srow[abi.S_LOCK_SPIN] += rdtsc() - t0
    return my


@kernel
def split_ticket_waiters(dom, lw, my):
    return load_acquire(dom, lw + 1) != my + 1


@kernel
def split_ticket_unlock(dom, lw, my):
    store_release(dom, lw, my + 1)


# --- mcs ---------------------------------------------------------------------------------------

@kernel
def mcs_node(vcpu):
    return D_MCS_NODES + 8 * vcpu


@kernel
def mcs_lock(dom, srow, vcpu, lw):
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
def mcs_unlock(dom, nxt):
    """Hand the lock to the successor ``nxt`` (vcpu + 1): the one write its spin waits for."""
    store_release(dom, mcs_node(nxt - 1) + N_LOCKED, 0)


# --- tas ---------------------------------------------------------------------------------------

@kernel
def tas_try(dom, lw):
    return load_acquire(dom, lw) == 0 and exchange(dom, lw, 1) == 0


@kernel
def tas_lock(dom, srow, lw):
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


@kernel
def tas_waiters(dom):
    return load_acquire(dom, D_TAS_WAITERS) > 0


@kernel
def tas_unlock(dom, lw):
    store_release(dom, lw, 0)


# --- any of them: what a design calls ----------------------------------------------------------

@kernel
def acquire(dom, srow, vcpu, kind, layout):
    """Take the domain lock of kind ``kind`` (LOCK_*) in domain layout ``layout`` (LAYOUT_*); a token
    for ``release`` (the ticket)."""
    lw = lock_word(layout, kind)
    own, hts, hfrom = owner_words(layout)
    my = 0
    if kind == LOCK_MCS:
        mcs_lock(dom, srow, vcpu, lw)
    elif kind == LOCK_TAS:
        tas_lock(dom, srow, lw)
    elif layout == LAYOUT_XEN:
        my = ticket_lock(dom, srow, lw)
    else:
        my = split_ticket_lock(dom, srow, lw)
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
    """Unlock; account the hold time when it was measured (t_hold != 0). The handoff stamp is
    written out in each branch rather than shared: numba's IR inliner has mis-compiled a helper
    inlined more than once into one caller."""
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
            mcs_unlock(dom, nxt)
    elif kind == LOCK_TAS:
        dom[own] = 0
        if tas_waiters(dom):
            dom[hfrom] = vcpu + 1
            dom[hts] = rdtsc()
        tas_unlock(dom, lw)
    elif layout == LAYOUT_XEN:
        if ticket_waiters(dom, lw, my):
            dom[hfrom] = vcpu + 1
            dom[hts] = rdtsc()
        dom[own] = 0
        ticket_unlock(dom, lw, my)
    else:
        if split_ticket_waiters(dom, lw, my):
            dom[hfrom] = vcpu + 1
            dom[hts] = rdtsc()
        dom[own] = 0
        split_ticket_unlock(dom, lw, my)


# --- reading a lock from Python ----------------------------------------------------------------

def ticket_halves(word) -> tuple[int, int]:
    """(head, tail) of a one-word ticket lock, each modulo 2**32."""
    w = int(word) & 0xFFFF_FFFF_FFFF_FFFF
    return w & TICKET_MASK, (w >> 32) & TICKET_MASK


def ticket_snapshot(dom, layout: str) -> tuple[int, int]:
    """(head, tail) of the ticket lock in ``layout``, as one consistent snapshot.

    xen layout: one read of the one word gives both, so ``tail - head`` (modulo 2**32) is the
    tickets outstanding at one instant: at most one per vCPU. padded layout: the tail read
    between two equal readings of the head (the head only grows), so that a holder that keeps
    taking the lock cannot inflate the count.
    """
    lw = words(layout)["lock"]
    if layout == "xen":
        return ticket_halves(dom[lw])
    for _ in range(1000):
        head = int(dom[lw])
        tail = int(dom[lw + 1])
        if int(dom[lw]) == head:
            break
    return head, tail


def waiters(dom, layout: str, lock: str, vcpus: int) -> int:
    """vCPUs waiting for the lock now (of the first ``vcpus``, for mcs: their nodes say so)."""
    if lock == "mcs":
        return sum(1 for v in range(vcpus) if dom[mcs_node(v) + N_LOCKED] != 0)
    if lock == "tas":
        return max(0, int(dom[D_TAS_WAITERS]))
    head, tail = ticket_snapshot(dom, layout)
    return max(0, ((tail - head) & TICKET_MASK) - 1)


def is_free(dom, layout: str, lock: str) -> bool:
    """Nobody holds the lock, queues for it or is named its owner."""
    w = words(layout, lock)
    if lock == "mcs":
        free = dom[w["lock"]] == 0
    elif lock == "tas":
        free = dom[w["lock"]] == 0 and dom[D_TAS_WAITERS] == 0
    else:
        head, tail = ticket_snapshot(dom, layout)
        free = head == tail
    return bool(free and dom[w["owner"]] == 0)


def holder(dom, layout: str):
    """The vCPU the owner word names, or None."""
    owner = int(dom[words(layout)["owner"]])
    return owner - 1 if owner else None

