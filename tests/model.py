"""Plain-Python sequential reference models of the mapcache designs.

Written from the designs (docs/variants.md and the algorithms it points to),
not from the compiled variants: nothing here imports ``testbed``. Each model runs one operation at a
time (the sequential specification: no interleaving inside an operation), keeps
its own plain Python state, and raises instead of returning a status:

- ``map(vcpu, mfn)`` returns the global slot index (the address is
  ``MAPCACHE_VA + slot``), or raises ``Exhausted`` (Xen's BUG when no slot is
  left) or ``RefcountError`` (a reference count wrapped);
- ``unmap(vcpu, slot)`` returns nothing, or raises ``RefcountError`` (a count
  would go below zero) or ``BadUnmap`` (the slot is not mapped).

A PTE is modelled as the MFN it maps, or ``None`` when empty. TLBs are not
modelled; the flushes the designs do are only counted (full local flushes for
the old design, with the TLB clock and ``NEED_FLUSH`` that decide the lazy ones;
single-entry flushes for the new design).

Where the design leaves a choice open, the model takes Xen's, and says so:

- the old design's "evict one of THIS vcpu's hash entries with refcnt 0" scans
  the buckets from the MFN's own bucket upwards, cyclically (Xen 4.14
  ``map_domain_page``), and an evicted bucket's MFN becomes NOTINUSE too;
- "if anything became free" after the harvest means that some slot that was in
  use had its garbage bit set;
- counts are fixed-width: the old design's refcount is uint32, the new one's
  uint8; a wrap to 0 on map is reported as ``RefcountError`` (the state keeps
  the wrapped value), and a decrement below 0 on unmap is refused with
  ``RefcountError`` (the state is left unchanged); Xen only ASSERTs in debug
  builds.
"""

from __future__ import annotations

from dataclasses import dataclass

NOTINUSE = -1
CLOCK_MASK = 0xFFFFFFFF


class ModelError(Exception):
    """Base of what a model operation can refuse."""


class Exhausted(ModelError):
    """No free slot: the hypervisor's BUG()."""


class RefcountError(ModelError):
    """A reference count wrapped (map) or would go negative (unmap)."""


class BadUnmap(ModelError):
    """unmap of a slot that is not mapped (or not this vCPU's)."""


class OrderError(ModelError):
    """unmap out of the order a stack design requires (not the last slot mapped)."""


def _pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


@dataclass
class HashEntry:
    mfn: int = NOTINUSE
    idx: int = NOTINUSE
    refcnt: int = 0

    def as_tuple(self) -> tuple[int, int, int]:
        return (self.mfn, self.idx, self.refcnt)


# --------------------------------------------------------------------------------------
# OLD: the per-domain pool under one lock
# --------------------------------------------------------------------------------------


class _Geometry:
    """The geometry both designs share: vCPUs, slots per vCPU, hash buckets."""

    def __init__(self, vcpus: int, entries: int, hash_entries: int):
        if vcpus < 1 or entries < 1 or not _pow2(hash_entries):
            raise ValueError(f"bad geometry: vcpus={vcpus} entries={entries} hash={hash_entries}")
        self.vcpus = vcpus
        self.entries = entries
        self.hash_entries = hash_entries
        self.slots = vcpus * entries


class LockedModel(_Geometry):
    """Xen's per-domain mapcache (docs/variants.md, "locked")."""

    REFCNT_BITS = 32

    def __init__(self, vcpus: int, entries: int = 16, hash_entries: int = 8):
        super().__init__(vcpus, entries, hash_entries)
        # domain
        self.cursor = 0
        self.inuse = [False] * self.slots
        self.garbage = [False] * self.slots
        self.epoch = 0
        self.tlbflush_timestamp = 0
        self.lock_held = False
        self.pte: list[int | None] = [None] * self.slots
        # the TLB clock (global) and each CPU's stamp of its last full flush
        self.tlbflush_clock = 1
        self.tlbflush_time = [0] * vcpus
        # per vCPU
        self.shadow_epoch = [0] * vcpus
        self.hash = [[HashEntry() for _ in range(hash_entries)] for _ in range(vcpus)]
        # counters, per vCPU
        self.flush_all = [0] * vcpus       # every full local flush (wraps and lazy epoch flushes)
        self.epoch_flushes = [0] * vcpus   # lazy flushes after another vCPU's wrap
        self.wraps = [0] * vcpus
        self.harvests = [0] * vcpus        # wraps whose garbage harvest freed something
        self.evictions = [0] * vcpus       # wraps that had to take an idle hash entry's slot
        self.hash_hits = [0] * vcpus
        self.exhaustions = [0] * vcpus
        self.refcount_errors = [0] * vcpus

    # -- helpers ------------------------------------------------------------------------

    def bucket(self, mfn: int) -> int:
        return mfn & (self.hash_entries - 1)

    def _first_zero(self, start: int) -> int | None:
        for i in range(start, self.slots):
            if not self.inuse[i]:
                return i
        return None

    def _need_flush(self, cpu_stamp: int, lastuse: int) -> bool:
        now = self.tlbflush_clock
        return now == 0 or (cpu_stamp <= lastuse and lastuse <= now)

    def _flush_tlb_local(self, vcpu: int) -> None:
        # pre_flush: tick the clock (a wrap to 0 restarts it at 1), flush, stamp this CPU.
        t = (self.tlbflush_clock + 1) & CLOCK_MASK
        self.tlbflush_clock = t if t != 0 else 1
        self.tlbflush_time[vcpu] = t
        self.flush_all[vcpu] += 1

    def _lock(self) -> None:
        assert not self.lock_held, "sequential model: the lock is free between operations"
        self.lock_held = True

    def _unlock(self) -> None:
        self.lock_held = False

    # -- operations ---------------------------------------------------------------------

    def map(self, vcpu: int, mfn: int) -> int:
        h = self.hash[vcpu][self.bucket(mfn)]
        if h.mfn == mfn:                                  # fast path, no lock
            self.hash_hits[vcpu] += 1
            h.refcnt = (h.refcnt + 1) & ((1 << self.REFCNT_BITS) - 1)
            if h.refcnt == 0:
                self.refcount_errors[vcpu] += 1
                raise RefcountError(f"vcpu {vcpu}: 32-bit refcount of mfn {mfn} wrapped")
            return h.idx

        self._lock()
        try:
            if self.epoch != self.shadow_epoch[vcpu]:     # someone wrapped since we last looked
                self.shadow_epoch[vcpu] = self.epoch
                if self._need_flush(self.tlbflush_time[vcpu], self.tlbflush_timestamp):
                    self._flush_tlb_local(vcpu)
                    self.epoch_flushes[vcpu] += 1

            idx = self._first_zero(self.cursor)
            if idx is None:                               # wrap: reclaim garbage
                self.wraps[vcpu] += 1
                became_free = False
                for i in range(self.slots):
                    if self.garbage[i]:
                        self.garbage[i] = False
                        if self.inuse[i]:
                            self.inuse[i] = False
                            became_free = True
                if became_free:
                    self.harvests[vcpu] += 1
                    idx = self._first_zero(0)
                else:
                    # evict one of THIS vCPU's idle hash entries, from the MFN's bucket up
                    H = self.hash_entries
                    b0 = self.bucket(mfn)
                    for k in range(H):
                        e = self.hash[vcpu][(b0 + k) % H]
                        if e.idx != NOTINUSE and e.refcnt == 0:
                            idx = e.idx
                            self.pte[idx] = None
                            e.idx = NOTINUSE
                            e.mfn = NOTINUSE
                            self.evictions[vcpu] += 1
                            break
                if idx is None:
                    self.exhaustions[vcpu] += 1
                    raise Exhausted(f"vcpu {vcpu}: no free slot for mfn {mfn}")
                self._flush_tlb_local(vcpu)
                self.epoch += 1
                self.shadow_epoch[vcpu] = self.epoch
                self.tlbflush_timestamp = self.tlbflush_clock
            self.inuse[idx] = True
            self.cursor = idx + 1
        finally:
            self._unlock()
        self.pte[idx] = mfn                               # written after the lock is dropped
        return idx

    def unmap(self, vcpu: int, slot: int) -> None:
        if not 0 <= slot < self.slots or self.pte[slot] is None:
            raise BadUnmap(f"vcpu {vcpu}: slot {slot} is not mapped")
        mfn = self.pte[slot]
        h = self.hash[vcpu][self.bucket(mfn)]
        if h.idx == slot:                                 # stays mapped, cached
            if h.refcnt == 0:
                self.refcount_errors[vcpu] += 1
                raise RefcountError(f"vcpu {vcpu}: unmap of cached slot {slot} with refcount 0")
            h.refcnt -= 1
        elif h.refcnt == 0:                               # cache this slot instead
            if h.idx != NOTINUSE:
                self.pte[h.idx] = None
                self.garbage[h.idx] = True
            h.mfn = mfn
            h.idx = slot
        else:
            self.pte[slot] = None
            self.garbage[slot] = True

    # -- queries ------------------------------------------------------------------------

    def cached_slots(self) -> set[int]:
        return {e.idx for row in self.hash for e in row if e.idx != NOTINUSE}

    def leaks(self, live: dict[int, list[tuple[int, int]]]) -> int:
        """In-use slots that no live mapping (slot, mfn), hash entry or garbage bit explains."""
        held = {slot for maps in live.values() for slot, _ in maps}
        explained = held | self.cached_slots()
        return sum(1 for i in range(self.slots) if self.inuse[i] and not self.garbage[i] and i not in explained)


# --------------------------------------------------------------------------------------
# NEW: the seed's per-vCPU lockless mapcache
# --------------------------------------------------------------------------------------


class LocklessModel(_Geometry):
    """The seed's per-vCPU mapcache (docs/variants.md, "lockless")."""

    REFCNT_BITS = 8

    def __init__(self, vcpus: int, entries: int = 32, hash_entries: int = 8):
        super().__init__(vcpus, entries, hash_entries)
        self.hash_mfn = [[NOTINUSE] * hash_entries for _ in range(vcpus)]
        self.hash_idx = [[NOTINUSE] * hash_entries for _ in range(vcpus)]
        self.refcnt = [[0] * entries for _ in range(vcpus)]
        self.inuse = [[False] * entries for _ in range(vcpus)]
        self.pte: list[int | None] = [None] * self.slots
        # counters, per vCPU
        self.flush_one = [0] * vcpus       # invlpg per slot take
        self.hash_hits = [0] * vcpus
        self.hash_replacements = [0] * vcpus   # misses that repointed a bucket that held a slot
        self.idle_frees = [0] * vcpus      # ... and freed its idle slot
        self.exhaustions = [0] * vcpus
        self.refcount_errors = [0] * vcpus

    def bucket(self, mfn: int) -> int:
        return mfn & (self.hash_entries - 1)

    def base(self, vcpu: int) -> int:
        return vcpu * self.entries

    def map(self, vcpu: int, mfn: int) -> int:
        b = self.bucket(mfn)
        old = self.hash_idx[vcpu][b]
        inuse, refcnt = self.inuse[vcpu], self.refcnt[vcpu]
        if self.hash_mfn[vcpu][b] != mfn:
            idx = next((i for i in range(self.entries) if not inuse[i]), None)
            if idx is None:
                self.exhaustions[vcpu] += 1
                raise Exhausted(f"vcpu {vcpu}: no free slot for mfn {mfn}")
            inuse[idx] = True
            self.pte[self.base(vcpu) + idx] = mfn
            self.flush_one[vcpu] += 1                     # flush_tlb_one_local(slot_va)
            if old != NOTINUSE:
                self.hash_replacements[vcpu] += 1
                if refcnt[old] == 0:                      # evict idle hash slot
                    inuse[old] = False
                    self.idle_frees[vcpu] += 1
            self.hash_mfn[vcpu][b] = mfn
            self.hash_idx[vcpu][b] = idx
        else:
            idx = old
            self.hash_hits[vcpu] += 1
        refcnt[idx] = (refcnt[idx] + 1) & ((1 << self.REFCNT_BITS) - 1)
        if refcnt[idx] == 0:
            self.refcount_errors[vcpu] += 1
            raise RefcountError(f"vcpu {vcpu}: 8-bit refcount of slot {idx} (mfn {mfn}) wrapped")
        return self.base(vcpu) + idx

    def unmap(self, vcpu: int, slot: int) -> None:
        idx = slot - self.base(vcpu)
        if not 0 <= idx < self.entries:
            raise BadUnmap(f"vcpu {vcpu}: slot {slot} is not one of this vCPU's")
        if self.refcnt[vcpu][idx] == 0:
            self.refcount_errors[vcpu] += 1
            raise RefcountError(f"vcpu {vcpu}: unmap of slot {slot} with refcount 0")
        mfn = self.pte[slot]
        self.refcnt[vcpu][idx] -= 1
        if self.hash_mfn[vcpu][self.bucket(mfn)] != mfn and self.refcnt[vcpu][idx] == 0:
            self.inuse[vcpu][idx] = False

    # -- queries ------------------------------------------------------------------------

    def leaks(self, live: dict[int, list[tuple[int, int]]]) -> int:
        """In-use slots that neither a live mapping (slot, mfn) nor a bucket explains."""
        n = 0
        for v in range(self.vcpus):
            held = {slot - self.base(v) for slot, _ in live.get(v, [])}
            cached = {i for i in self.hash_idx[v] if i != NOTINUSE}
            n += sum(1 for i in range(self.entries) if self.inuse[v][i] and i not in held and i not in cached)
        return n


# --------------------------------------------------------------------------------------
# PERCPU: the ASI series' per-vCPU mapcache (garbage, wrap, one batched flush)
# --------------------------------------------------------------------------------------


class PercpuModel(_Geometry):
    """The per-vCPU mapcache of Xen's Address Space Isolation series (docs/variants.md, "percpu").

    The old design's algorithm with the domain's cursor and bitmaps moved into
    each vCPU over its own ``entries`` slots (global index ``vcpu * entries +
    idx``): no lock, no epoch, no TLB clock. A wrap reclaims the garbage and
    flushes the local TLB once. Choices: eviction scans from the MFN's bucket
    upwards as in the old design; the refcount is uint32 as in the old design.
    """

    REFCNT_BITS = 32

    def __init__(self, vcpus: int, entries: int = 32, hash_entries: int = 8):
        super().__init__(vcpus, entries, hash_entries)
        E = entries
        self.cursor = [0] * vcpus
        self.inuse = [[False] * E for _ in range(vcpus)]
        self.garbage = [[False] * E for _ in range(vcpus)]
        self.hash = [[HashEntry() for _ in range(hash_entries)] for _ in range(vcpus)]
        self.pte: list[int | None] = [None] * self.slots
        self.flush_all = [0] * vcpus       # one per wrap
        self.wraps = [0] * vcpus
        self.harvests = [0] * vcpus        # wraps that reclaimed garbage
        self.evictions = [0] * vcpus
        self.hash_hits = [0] * vcpus
        self.exhaustions = [0] * vcpus
        self.refcount_errors = [0] * vcpus

    def bucket(self, mfn: int) -> int:
        return mfn & (self.hash_entries - 1)

    def base(self, vcpu: int) -> int:
        return vcpu * self.entries

    def map(self, vcpu: int, mfn: int) -> int:
        h = self.hash[vcpu][self.bucket(mfn)]
        if h.mfn == mfn:
            self.hash_hits[vcpu] += 1
            h.refcnt = (h.refcnt + 1) & ((1 << self.REFCNT_BITS) - 1)
            if h.refcnt == 0:
                self.refcount_errors[vcpu] += 1
                raise RefcountError(f"vcpu {vcpu}: 32-bit refcount of mfn {mfn} wrapped")
            return self.base(vcpu) + h.idx
        inuse, garbage = self.inuse[vcpu], self.garbage[vcpu]
        idx = next((i for i in range(self.cursor[vcpu], self.entries) if not inuse[i]), None)
        if idx is None:                                   # wrap
            self.wraps[vcpu] += 1
            reclaimed = False
            for i in range(self.entries):
                if garbage[i]:
                    garbage[i] = False
                    inuse[i] = False
                    reclaimed = True
            if reclaimed:
                self.harvests[vcpu] += 1
            idx = next((i for i in range(self.entries) if not inuse[i]), None)
            if idx is None:
                H = self.hash_entries
                b0 = self.bucket(mfn)
                for k in range(H):
                    e = self.hash[vcpu][(b0 + k) % H]
                    if e.idx != NOTINUSE and e.refcnt == 0:
                        idx = e.idx
                        self.pte[self.base(vcpu) + idx] = None
                        e.idx = e.mfn = NOTINUSE
                        self.evictions[vcpu] += 1
                        break
            if idx is None:
                self.exhaustions[vcpu] += 1
                raise Exhausted(f"vcpu {vcpu}: no free slot for mfn {mfn}")
            self.flush_all[vcpu] += 1                     # one local flush per wrap
        inuse[idx] = True
        self.cursor[vcpu] = idx + 1
        self.pte[self.base(vcpu) + idx] = mfn
        return self.base(vcpu) + idx

    def unmap(self, vcpu: int, slot: int) -> None:
        idx = slot - self.base(vcpu)
        if not 0 <= idx < self.entries or self.pte[slot] is None:
            raise BadUnmap(f"vcpu {vcpu}: slot {slot} is not one of this vCPU's mapped slots")
        mfn = self.pte[slot]
        h = self.hash[vcpu][self.bucket(mfn)]
        if h.idx == idx:
            if h.refcnt == 0:
                self.refcount_errors[vcpu] += 1
                raise RefcountError(f"vcpu {vcpu}: unmap of cached slot {slot} with refcount 0")
            h.refcnt -= 1
        elif h.refcnt == 0:
            if h.idx != NOTINUSE:
                self.pte[self.base(vcpu) + h.idx] = None
                self.garbage[vcpu][h.idx] = True
            h.mfn, h.idx = mfn, idx
        else:
            self.pte[slot] = None
            self.garbage[vcpu][idx] = True

    def leaks(self, live: dict[int, list[tuple[int, int]]]) -> int:
        n = 0
        for v in range(self.vcpus):
            held = {slot - self.base(v) for slot, _ in live.get(v, [])}
            cached = {e.idx for e in self.hash[v] if e.idx != NOTINUSE}
            n += sum(1 for i in range(self.entries)
                     if self.inuse[v][i] and not self.garbage[v][i] and i not in held and i not in cached)
        return n


# --------------------------------------------------------------------------------------
# KMAP-LOCAL: Linux's kmap_local_page, a per-vCPU stack
# --------------------------------------------------------------------------------------


class KmapLocalModel(_Geometry):
    """Linux's ``kmap_local_page`` (docs/variants.md, "kmap-local").

    Per vCPU a stack of ``entries`` slots (global index ``vcpu * entries +
    depth``): map pushes and writes the PTE, unmap must release the top slot,
    clears its PTE, flushes that slot (``invlpg``) and pops. No hash. An unmap
    of another slot than the top raises ``OrderError``.
    """

    def __init__(self, vcpus: int, entries: int = 16, hash_entries: int = 8):
        super().__init__(vcpus, entries, hash_entries)
        self.stack: list[list[int]] = [[] for _ in range(vcpus)]     # mapped MFNs, bottom first
        self.pte: list[int | None] = [None] * self.slots
        self.flush_one = [0] * vcpus
        self.exhaustions = [0] * vcpus
        self.bug_on_present = [0] * vcpus

    def base(self, vcpu: int) -> int:
        return vcpu * self.entries

    def map(self, vcpu: int, mfn: int) -> int:
        st = self.stack[vcpu]
        if len(st) == self.entries:
            self.exhaustions[vcpu] += 1
            raise Exhausted(f"vcpu {vcpu}: all {self.entries} kmap slots held")
        slot = self.base(vcpu) + len(st)
        if self.pte[slot] is not None:
            self.bug_on_present[vcpu] += 1
        st.append(mfn)
        self.pte[slot] = mfn
        return slot

    def unmap(self, vcpu: int, slot: int) -> None:
        idx = slot - self.base(vcpu)
        if not 0 <= idx < self.entries or self.pte[slot] is None:
            raise BadUnmap(f"vcpu {vcpu}: slot {slot} is not one of this vCPU's mapped slots")
        if idx != len(self.stack[vcpu]) - 1:
            raise OrderError(f"vcpu {vcpu}: unmap of slot {slot} while slot "
                             f"{self.base(vcpu) + len(self.stack[vcpu]) - 1} is on top")
        self.pte[slot] = None
        self.flush_one[vcpu] += 1
        self.stack[vcpu].pop()

    def leaks(self, live: dict[int, list[tuple[int, int]]]) -> int:
        return sum(1 for v in range(self.vcpus) for i in range(len(self.stack[v]), self.entries)
                   if self.pte[self.base(v) + i] is not None)


# --------------------------------------------------------------------------------------
# WORKLOAD: the operation stream one vCPU's loop draws from its random state
# --------------------------------------------------------------------------------------

M64 = (1 << 64) - 1
WORKLOAD_IDS = {"uniform": 0, "hot": 1, "ptwalk": 2, "guest": 3, "timers": 4, "nest-same": 5}


class WorkloadModel:
    """What one vCPU's operation loop maps, re-derived from its random state.

    The generator is xorshift64* (shift 12, 25, 27; multiplier 0x2545F4914F6CDD1D),
    a draw in [0, n) is Lemire's multiply-shift of the top 32 bits, and one
    operation is:

    - guest and timers: the guest's work first (``guest_work`` rounds of the
      xorshift chain on the state itself, no multiplier) unless the last timer
      hypercall got -ETIME (``streak`` > 0: the guest retries at once), then
      ``burst`` hypercalls;
    - ptwalk: one walk of ``1 + draw(nest)`` distinct MFNs (redrawn while the walk
      already holds it, when the working set has ``nest`` MFNs), unmapped in
      reverse order; with ``recursive`` (in 1/2**16) each level below the first,
      when ``draw(2**16) < recursive``, maps ``walk[draw(k)]`` again instead;
    - hot: 9 draws in 10 (``draw(10) != 0``) from the hot set, else the working set;
    - uniform: one MFN of the working set.
    - nest-same: one MFN mapped ``nest`` times, then ``levels`` other MFNs (distinct
      from those held, when the working set has more than ``levels``), all held.

    ``operation`` returns the bursts, each the MFNs in map order.
    """

    def __init__(self, workload: str, state: int, *, working_set: int, hot: int = 8, nest: int = 1,
                 burst: int = 1, guest_work: int = 0, levels: int = 0, recursive: int = 0):
        self.wl = WORKLOAD_IDS[workload]
        self.state = state
        self.working_set, self.hot, self.guest_work = working_set, hot, guest_work
        self.same = self.wl == WORKLOAD_IDS["nest-same"]
        self.nest = nest if self.wl == WORKLOAD_IDS["ptwalk"] or self.same else 1
        self.below = levels if self.same else 0
        self.burst = burst if self.wl in (WORKLOAD_IDS["guest"], WORKLOAD_IDS["timers"]) else 1
        self.work_done = 0
        self.recursive = recursive if self.wl == WORKLOAD_IDS["ptwalk"] else 0

    def next_rand(self) -> int:
        x = self.state
        x ^= x >> 12
        x = (x ^ (x << 25)) & M64
        x ^= x >> 27
        self.state = x
        return (x * 0x2545F4914F6CDD1D) & M64

    def draw(self, n: int) -> int:
        return ((self.next_rand() >> 32) * n) >> 32

    def draw_mfn(self) -> int:
        if self.wl == WORKLOAD_IDS["hot"] and self.hot > 0:
            if self.draw(10) != 0:
                return self.draw(min(self.hot, self.working_set))
        return self.draw(self.working_set)

    def _work(self) -> None:
        x = self.state
        for _ in range(self.guest_work):
            x ^= x >> 12
            x = (x ^ (x << 25)) & M64
            x ^= x >> 27
        self.state = x
        self.work_done += 1

    def operation(self, streak: int = 0) -> list[list[int]]:
        ptwalk = self.wl == WORKLOAD_IDS["ptwalk"]
        if self.wl in (WORKLOAD_IDS["guest"], WORKLOAD_IDS["timers"]) and streak == 0:
            self._work()
        distinct = ptwalk and self.working_set >= self.nest
        bursts = []
        others = self.same and self.working_set > self.below
        for _ in range(self.burst):
            depth = 1 + self.draw(self.nest) if ptwalk else self.nest + self.below
            walk: list[int] = []
            for k in range(depth):
                if self.recursive and k > 0 and self.draw(1 << 16) < self.recursive:
                    walk.append(walk[self.draw(k)])     # a linear entry: an earlier level's table again
                    continue
                # nest-same: the first MFN mapped nest times, then below it levels others
                mfn = walk[0] if self.same and 0 < k < self.nest else self.draw_mfn()
                if distinct or (others and k >= self.nest):
                    while mfn in walk:
                        mfn = self.draw_mfn()
                walk.append(mfn)
            bursts.append(walk)
        return bursts


# --------------------------------------------------------------------------------------
# interrupts
# --------------------------------------------------------------------------------------


def interrupt(model, vcpu: int, mfn: int) -> int:
    """An interrupt handler on ``vcpu``: a nested map of ``mfn`` and its unmap, on any model.

    Nothing else: a handler's mapping is an ordinary operation of the design,
    nested inside whatever the vCPU holds. Where it lands relative to the
    interrupted operation is the design's business (a design that disables
    interrupts around its operations runs it after; ``kmap-local`` runs it on
    top of its stack at the point it arrived). Returns the slot it used;
    raises what the design's map raises.
    """
    slot = model.map(vcpu, mfn)
    model.unmap(vcpu, slot)
    return slot
