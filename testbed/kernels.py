"""The compiled operation loop every vCPU runs, whatever the variant.

One operation of the standard workload maps an MFN, accesses the frame through
the returned address and unmaps it. The access is the oracle: it translates
the address (through the vCPU's TLB for a mapcache slot), checks that the
frame reached carries the MFN that was mapped in its first word, and bumps this
vCPU's write counter in that frame. Every held mapping is checked again just
before its unmap (``recheck``; ``testbed/oracle.py`` says why that also
catches a slot a later map of a nested walk takes from under its holder). Separately, the vCPU records how many
writes it meant for each MFN (its ``expect`` row); after the run the two must
agree frame by frame, or writes were lost.

The variant is chosen by the small integer ``p[P_VARIANT]``. ``ops_loop`` is
inlined with the id as a constant into one function per registered variant
(generated from the registry, ``variants/dispatch.py``, and cached on disk like
every kernel), so each design's loop is compiled with its own map and unmap
alone (the dispatch's overload on a constant id), none paying in compile time,
registers or code layout for the others' paths. Those loops import this module,
so they are loaded above it: ``testbed/loops.py`` picks one by id (``run_ops``).
An id the registry does not know runs a loop whose map reports
``abi.ST_BAD_VARIANT`` at once.
"""

import numpy as np
from .jit import inline_kernel, kernel

from . import abi, tlb
from .atomics import load_acquire, rdtsc
from .irq import handler as irq_handler
from .irq import irq_arm, irq_rand, irq_status, loop_point
from .variants.dispatch import map_page, map_vid, unmap_page, unmap_vid  # generated from the registry

# The workload ids and the frame geometry are contract facts (abi.py); the loop uses them by these names.
from .abi import (FRAME_HDR, WL_GUEST, WL_HOT, WL_NEST_SAME, WL_PTWALK, WL_TIMERS, WL_UNIFORM,  # noqa: F401,E402
                  counter_col, frame_words)


# --- the per-vCPU random generator: xorshift64*, seeded from seed + vcpu -------------


def seed_state(seed: int, vcpu: int) -> np.ndarray:
    """splitmix64 of (seed, vcpu): a non-zero xorshift state."""
    z = (seed * 0x9E3779B97F4A7C15 + vcpu * 0xBF58476D1CE4E5B9 + 0x94D049BB133111EB) & (2**64 - 1)
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & (2**64 - 1)
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & (2**64 - 1)
    z ^= z >> 31
    return np.array([z or 1], dtype=np.uint64)


@kernel
def next_rand(rng):
    x = rng[0]
    x ^= x >> np.uint64(12)
    x ^= x << np.uint64(25)
    x ^= x >> np.uint64(27)
    rng[0] = x
    return x * np.uint64(0x2545F4914F6CDD1D)


@kernel
def draw(rng, n):
    """Uniform integer in [0, n), n < 2**32: Lemire's multiply-shift, no division."""
    return np.int64(((next_rand(rng) >> np.uint64(32)) * np.uint64(n)) >> np.uint64(32))


@kernel
def draw_mfn(rng, p):
    ws = p[abi.P_WORKING_SET]
    if p[abi.P_WORKLOAD] == WL_HOT and p[abi.P_HOT] > 0:
        # 9 draws in 10 from the hot set, the rest from the whole working set.
        if draw(rng, 10) != 0:
            return draw(rng, min(p[abi.P_HOT], ws))
    return draw(rng, ws)


# --- one operation ---------------------------------------------------------------------


@kernel
def log2_bin(x):
    b = 0
    while x > 1 and b < abi.LAT_BINS - 1:
        x >>= 1
        b += 1
    return b


@inline_kernel
def timed_map(vid, vcpu, mfn, p, dom, pte, dbits, vrow, srow, hrow, tlbv, irq):
    n = srow[abi.S_MAPS]
    srow[abi.S_MAPS] = n + 1
    # One call site only: numba's IR inliner mis-compiles a function inlined twice into one caller.
    sampled = (n & ((np.int64(1) << p[abi.P_LAT_EVERY]) - 1)) == 0
    t0 = 0
    if sampled:
        srow[abi.S_SAMPLING] = 1
        t0 = rdtsc()
    va = map_vid(vid, vcpu, mfn, p, dom, pte, dbits, vrow, srow, tlbv, irq)
    if sampled:
        srow[abi.S_SAMPLING] = 0
        dt = rdtsc() - t0
        hrow[log2_bin(dt)] += 1
        srow[abi.S_LAT_SAMPLES] += 1
        srow[abi.S_LAT_CYCLES] += dt
        if dt > srow[abi.S_LAT_MAX]:
            srow[abi.S_LAT_MAX] = dt
    return va


@inline_kernel
def access(vcpu, va, mfn, p, pte, frames, erow, srow, tlbv):
    """Touch the frame behind ``va``, checking it is ``mfn``'s. Counts what is wrong."""
    if srow[abi.S_REFILL_LEFT] > 0:
        tlb.refill(p, srow)           # --cost-refill: the access follows a full flush
    if va >= abi.MAPCACHE_VA:
        pfn = tlb.translate(tlbv, p, pte, va - abi.MAPCACHE_VA, srow)
    else:
        pfn = va
    # The frame is written before the vCPU records its intent, so that a vCPU killed in
    # between leaves an extra write, never a lost one.
    if pfn < 0 or pfn >= p[abi.P_FRAMES]:
        srow[abi.S_STALE] += 1        # a fault, or a translation to no frame: the write is lost
    else:
        if frames[pfn, 0] != mfn:
            srow[abi.S_STALE] += 1
        frames[pfn, counter_col(vcpu)] += 1
    erow[mfn] += 1
    srow[abi.S_WRITES] += 1


@kernel
def recheck(vcpu, va, mfn, p, pte, frames, srow, tlbv):
    """The oracle, again, on a mapping still held, just before its unmap.

    Its PTE must still map ``mfn`` (else the slot was taken away and reused while
    held), and the frame a translation reaches now must still be ``mfn``'s (a
    stale TLB entry can hide a double allocation from the PTE check, and the other
    way round). Reads only: the TLB is looked at without a fill or an LRU tick.
    A direct-map address is its MFN's frame for good: nothing to check again.
    """
    if va >= abi.MAPCACHE_VA:
        srow[abi.S_RECHECKS] += 1
        slot = va - abi.MAPCACHE_VA
        if load_acquire(pte, slot) != (mfn | tlb.PTE_PRESENT):
            srow[abi.S_HELD_PTE] += 1
        pfn = tlb.peek(tlbv, p, pte, slot)
        if pfn < 0 or pfn >= p[abi.P_FRAMES] or frames[pfn, 0] != mfn:
            srow[abi.S_HELD_STALE] += 1


@inline_kernel
def ops_loop(vid, irq, n, vcpu, p, dom, pte, dbits, vst, frames, expect, stats, hist, live, tlbv, rng):
    """Run ``n`` operations of the configured workload under variant ``vid``; a status code (0 = all fine).

    ``irq`` is the interrupt context (testbed/irq.py): ``None`` compiles a loop
    with no interrupt code at all; ``(frames, expect[vcpu])`` one that takes them.

    Mappings held when the loop stops (an error in the middle of a nested walk)
    stay listed in ``live[vcpu]`` as (va, mfn) pairs, their count in S_LIVE.
    """
    srow = stats[vcpu]
    vrow = vst[vcpu]
    erow = expect[vcpu]
    hrow = hist[vcpu]
    lrow = live[vcpu]
    wl = p[abi.P_WORKLOAD]
    same = wl == WL_NEST_SAME
    nest = p[abi.P_NEST] if wl == WL_PTWALK or same else 1
    # nest-same: one MFN mapped nest times, then levels other frames under it, all held
    # (distinct, when the working set has enough of them).
    below = p[abi.P_LEVELS] if same else 0
    others = same and p[abi.P_WORKING_SET] > below
    # A page-table walk maps distinct frames, when the working set has enough of them, except where
    # an entry maps a table an earlier level of the walk mapped (--recursive: a linear page table).
    distinct = wl == WL_PTWALK and p[abi.P_WORKING_SET] >= nest
    recursive = wl == WL_PTWALK and p[abi.P_RECURSIVE] > 0
    hypercall = wl == WL_GUEST or wl == WL_TIMERS
    burst = p[abi.P_BURST] if hypercall else 1
    done = 0
    status = abi.ST_OK
    budget = p[abi.P_CHUNK_CYCLES]
    check_mask = 0 if hypercall or p[abi.P_CHECK_EVERY_OP] != 0 else 15
    t_chunk = rdtsc()
    for _ in range(n):
        # A chunk is bounded in time as well as in count, so that the stop flag is
        # seen soon even when operations slow down a thousandfold: the clock is read
        # every 16 operations, or every operation for hypercall workloads (each is
        # microseconds of guest work) and where a lock convoy can form (P_CHECK_EVERY_OP).
        # Where the clock is read, the exposure of the last unmapped frame is looked at (expose).
        if (done & check_mask) == check_mask:
            now = rdtsc()
            if now - t_chunk > budget:
                break
            expose(now, srow[abi.S_OPS] + done, p, pte, lrow, srow, tlbv)
        # The guest computes, touching its own pages, then makes a hypercall; after -ETIME it retries at once.
        if hypercall and srow[abi.S_STREAK] == 0:
            guest_work(p, rng, srow)
            guest_pages(p, srow, tlbv)
        irq_arm(irq, p, vrow)
        deadline = rdtsc() + p[abi.P_SLACK] if wl == WL_TIMERS else 0
        for _b in range(burst):
            depth = nest + below if wl != WL_PTWALK else 1 + draw(rng, nest)
            held = 0
            for k in range(depth):
                again = recursive and k > 0 and draw(rng, 1 << 16) < p[abi.P_RECURSIVE]
                if again:
                    mfn = lrow[2 * draw(rng, k) + 1]       # the table an earlier level mapped, again
                elif same and 0 < k < nest:
                    mfn = lrow[1]
                else:
                    mfn = draw_mfn(rng, p)
                if not again and (distinct or (others and k >= nest)):
                    while held_mfn(lrow, k, mfn):
                        mfn = draw_mfn(rng, p)
                loop_point(irq, vcpu, p, dom, pte, dbits, vrow, srow, tlbv)
                va = timed_map(vid, vcpu, mfn, p, dom, pte, dbits, vrow, srow, hrow, tlbv, irq)
                if va < 0:
                    status = -va
                    break
                lrow[2 * k] = va
                lrow[2 * k + 1] = mfn
                held = k + 1
                loop_point(irq, vcpu, p, dom, pte, dbits, vrow, srow, tlbv)
                access(vcpu, va, mfn, p, pte, frames, erow, srow, tlbv)
            srow[abi.S_LIVE] = held
            if status != abi.ST_OK:
                break
            for k in range(held - 1, -1, -1):
                loop_point(irq, vcpu, p, dom, pte, dbits, vrow, srow, tlbv)
                recheck(vcpu, lrow[2 * k], lrow[2 * k + 1], p, pte, frames, srow, tlbv)
                st = unmap_vid(vid, vcpu, lrow[2 * k], p, dom, pte, dbits, vrow, srow, tlbv, irq)
                if st != abi.ST_OK:
                    if st == abi.ST_BAD_VA:
                        srow[abi.S_INVARIANT] += 1
                    status = st
                    break
                srow[abi.S_LIVE] = k
            if status != abi.ST_OK:
                break
        status = irq_status(irq, vrow, status)     # a handler's map or unmap failed
        if status != abi.ST_OK:
            break
        if wl == WL_TIMERS:
            arm_timer(p, srow, deadline)
        done += 1
        srow[abi.S_PROGRESS] += 1
    srow[abi.S_OPS] += done
    return status


# --- simulated interrupts (testbed/irq.py) ----------------------------------------------


@irq_handler
@kernel
def irq_take(vcpu, p, dom, pte, dbits, vrow, srow, tlbv, frames, erow, inside):
    """An arrival point with an interrupt pending (``irq_body``), the variant id read from ``p``: the
    handler of the interrupt context ``(frames, erow)``, compiled with every design's map and unmap.
    A design's interrupt loop passes its id in the context and gets its own handler
    (``variants/dispatch.py``, ``irq.handlers``)."""
    irq_body(p[abi.P_VARIANT], vcpu, p, dom, pte, dbits, vrow, srow, tlbv, frames, erow, inside)


@inline_kernel
def irq_body(vid, vcpu, p, dom, pte, dbits, vrow, srow, tlbv, frames, erow, inside):
    """An arrival point with an interrupt pending: count down, defer, or run the handler.

    The handler maps an MFN drawn from the interrupt generator, accesses it
    through the oracle's check and unmaps it, with interrupts disabled; its map
    and unmap get no interrupt context, so no arrival point inside them. A
    failed map or unmap leaves its status in ``V_IRQ_STATUS``, which ends the
    run at the end of the interrupted operation. It maps through the designs, whose map and
    unmap call the arrival points of ``irq``: so ``irq`` is told of it (``irq.handler``) rather
    than importing it.
    """
    n = vrow[abi.V_IRQ_PENDING]
    if n > 1:
        vrow[abi.V_IRQ_PENDING] = n - 1
        return
    off = vrow[abi.V_IRQ_OFF] != 0
    if off and p[abi.P_NMI] == 0:
        if n == 1:
            srow[abi.S_IRQ_DEFERRED] += 1
            vrow[abi.V_IRQ_PENDING] = -1           # held until interrupts are enabled again
        return
    vrow[abi.V_IRQ_PENDING] = 0
    srow[abi.S_IRQ_TAKEN] += 1
    if inside:
        srow[abi.S_IRQ_INSIDE] += 1
        if off:
            srow[abi.S_NMI_IRQS_OFF] += 1      # an NMI: local_irq_save does not hold it back
    vrow[abi.V_IRQ_OFF] += 1
    mfn = irq_rand(vrow, p[abi.P_WORKING_SET])
    va = map_vid(vid, vcpu, mfn, p, dom, pte, dbits, vrow, srow, tlbv)
    if va < 0:
        if vrow[abi.V_IRQ_STATUS] == abi.ST_OK:
            vrow[abi.V_IRQ_STATUS] = -va
    else:
        srow[abi.S_IRQ_MAPS] += 1
        access(vcpu, va, mfn, p, pte, frames, erow, srow, tlbv)
        st = unmap_vid(vid, vcpu, va, p, dom, pte, dbits, vrow, srow, tlbv)
        if st != abi.ST_OK and vrow[abi.V_IRQ_STATUS] == abi.ST_OK:
            if st == abi.ST_BAD_VA:
                srow[abi.S_INVARIANT] += 1
            vrow[abi.V_IRQ_STATUS] = st
    vrow[abi.V_IRQ_OFF] -= 1


# --- exposure: how long an unmapped frame stays reachable (docs/cost-model.md) ----------


@kernel
def reachable(tlbv, p, pte, slot, mfn):
    """Can this CPU still reach ``mfn`` through ``slot``: its PTE maps it, or the TLB does?"""
    if load_acquire(pte, slot) == (mfn | tlb.PTE_PRESENT):
        return True
    ways = p[abi.P_TLB_WAYS]
    base = (slot & (p[abi.P_TLB_SETS] - 1)) * ways
    for w in range(base, base + ways):
        if tlbv[tlb.word(w, tlb.T_TAG)] == slot + 1 and tlbv[tlb.word(w, tlb.T_PFN)] == mfn:
            return True
    return False


@kernel
def reachable_frames(p, pte, tlbv):
    """Frames this CPU can reach through the mapcache now: present PTEs of the domain's slots,
    and entries of its TLB that translate a slot to a frame its PTE no longer maps."""
    n = 0
    slots = p[abi.P_SLOTS]
    for s in range(slots):
        if (load_acquire(pte, s) & tlb.PTE_PRESENT) != 0:
            n += 1
    for w in range(tlbv.size // tlb.T_COLS - 1):
        tag = tlbv[tlb.word(w, tlb.T_TAG)]
        if 0 < tag <= slots and load_acquire(pte, tag - 1) != (tlbv[tlb.word(w, tlb.T_PFN)] | tlb.PTE_PRESENT):
            n += 1
    return n


@kernel
def expose(now, ops, p, pte, lrow, srow, tlbv):
    """At a look (where the loop reads the clock): follow one unmapped frame until it is unreachable.

    The frame followed is the last operation's first mapping (``live[vcpu]``'s
    first pair), unmapped last. While one is followed, each look checks it;
    when it is no longer reachable the sample ends, its cycles and operations
    counted from the first look after its unmap. A frame unreachable at that
    first look is a sample of zero. Every ``2**lat_every`` samples the
    reachable frames are counted too. A direct-map address is not followed:
    the direct map reaches every frame, always.
    """
    s = srow[abi.S_EXP_SLOT]
    if s != 0:
        if reachable(tlbv, p, pte, s - 1, srow[abi.S_EXP_MFN]):
            return
        srow[abi.S_EXP_SLOT] = 0
        exposed(srow, now - srow[abi.S_EXP_T0], ops - srow[abi.S_EXP_OP0])
        return
    va = lrow[0]
    if va < abi.MAPCACHE_VA:
        return
    slot = va - abi.MAPCACHE_VA
    if (srow[abi.S_EXP_SAMPLES] & ((np.int64(1) << p[abi.P_LAT_EVERY]) - 1)) == 0:
        srow[abi.S_EXP_INSTANTS] += 1
        srow[abi.S_EXP_REACHABLE] += reachable_frames(p, pte, tlbv)
    if reachable(tlbv, p, pte, slot, lrow[1]):
        srow[abi.S_EXP_SLOT] = slot + 1
        srow[abi.S_EXP_MFN] = lrow[1]
        srow[abi.S_EXP_T0] = now
        srow[abi.S_EXP_OP0] = ops
    else:
        exposed(srow, 0, 0)


@kernel
def exposed(srow, cycles, ops):
    srow[abi.S_EXP_SAMPLES] += 1
    srow[abi.S_EXP_CYCLES] += cycles
    srow[abi.S_EXP_OPS] += ops
    if cycles > srow[abi.S_EXP_MAX_CYCLES]:
        srow[abi.S_EXP_MAX_CYCLES] = cycles
    if ops > srow[abi.S_EXP_MAX_OPS]:
        srow[abi.S_EXP_MAX_OPS] = ops


@kernel
def guest_pages(p, srow, tlbv):
    """The guest touching its own --guest-pages pages through the TLB (tlb.touch_guest)."""
    for g in range(p[abi.P_GUEST_PAGES]):
        tlb.touch_guest(tlbv, p, g, srow)


@kernel
def held_mfn(lrow, k, mfn):
    for j in range(k):
        if lrow[2 * j + 1] == mfn:
            return True
    return False


@kernel
def arm_timer(p, srow, deadline):
    """VCPUOP_set_singleshot_timer with VCPU_SSHOTTMR_future: -ETIME if the deadline passed and
    Xen honours the flag (4.17 and older, ``P_SSHOT_FUTURE``); Xen 4.18 and later arm it anyway
    (it fires at once). A late timer is counted either way (``S_TIMER_LATE``). The streak is
    FreeBSD's: ``P_PANIC_STREAK`` -ETIME in a row panic (10.4's retry loop: 59)."""
    now = rdtsc()
    srow[abi.S_TIMER_SETS] += 1
    srow[abi.S_TIMER_CYCLES] += now - (deadline - p[abi.P_SLACK])
    if now > deadline:
        srow[abi.S_TIMER_LATE] += 1
    if now <= deadline or p[abi.P_SSHOT_FUTURE] == 0:
        srow[abi.S_STREAK] = 0
        return
    srow[abi.S_ETIME] += 1
    streak = srow[abi.S_STREAK] + 1
    if streak > srow[abi.S_STREAK_MAX]:
        srow[abi.S_STREAK_MAX] = streak
    if streak >= p[abi.P_PANIC_STREAK]:
        srow[abi.S_PANICS] += 1      # "can't schedule timer": the guest would reboot; count it and go on
        streak = 0
    srow[abi.S_STREAK] = streak


@kernel
def guest_work(p, rng, srow):
    """The guest computing on private data: --guest-work rounds of a xorshift chain.

    Each round depends on the last and is linear over GF(2), not over the
    integers, so the compiler can neither vectorise nor fold it: the work is
    really done, a few cycles a round.
    """
    x = rng[0]
    for _ in range(p[abi.P_GUEST_WORK]):
        x ^= x >> np.uint64(12)
        x ^= x << np.uint64(25)
        x ^= x >> np.uint64(27)
    rng[0] = x
    srow[abi.S_WORK] += 1
