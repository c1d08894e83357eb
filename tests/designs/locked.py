"""locked: Xen's old per-domain mapcache, its reference model and the adapter.

Where the design leaves a choice open, the model takes Xen's (4.14 ``map_domain_page``):

- "evict one of THIS vcpu's hash entries with refcnt 0" scans the buckets from
  the MFN's own bucket upwards, cyclically, and an evicted bucket's MFN becomes
  NOTINUSE too;
- "if anything became free" after the harvest means that some slot that was in
  use had its garbage bit set;
- the refcount is a uint32: a wrap to 0 on map is reported as ``RefcountError``
  (the state keeps the wrapped value), a decrement below 0 on unmap is refused
  with ``RefcountError`` (the state unchanged); Xen only ASSERTs in debug builds.
"""

from __future__ import annotations

from testbed import abi, locks, tlb
from testbed.variants import locked

from . import PRESENT, Geom, bits, counters, pte_words, set_bit, tail_clear

try:
    from model import CLOCK_MASK, NOTINUSE, Exhausted, Geometry, HashEntry, RefcountError, BadUnmap
except ImportError:  # tests/ made a package
    from tests.model import CLOCK_MASK, NOTINUSE, Exhausted, Geometry, HashEntry, RefcountError, BadUnmap


# --------------------------------------------------------------------------------------
# the reference model
# --------------------------------------------------------------------------------------


class LockedModel(Geometry):
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
# the adapter: what the differential tests need
# --------------------------------------------------------------------------------------


Model = LockedModel
PER_VCPU = False
SKIP = {"FAULT_NO_EPOCH_FLUSH": {"flush_all", "epoch_flushes", "tlbflush_time", "tlbflush_clock",
                                 "tlbflush_timestamp"}}
STALE_GEOM = Geom(3, 4, 2)
IRQ_GEOM = Geom(2, 8, 4, levels=2)
# The old design's pool holds one walk per vCPU only if other vCPUs' idle hash entries leave
# room (tests/test_variants.py, test_locked_pool_runs_out_when_every_vcpu_walks_deep); nest-same
# maps each of its nest maps to a slot of its own.
RUN_OPTIONS = {"ptwalk": {"nest": 8}, "nest-same": {"nest": 4}}

# (geometry, what the seeds together must exercise there)
L_ALL = ("hash_hits", "wraps", "harvests", "evictions", "exhausted", "epoch_flushes")
GEOMS = [
    (Geom(1, 1, 1), ("hash_hits", "wraps", "evictions", "exhausted")),   # one slot: never garbage
    (Geom(2, 1, 1), L_ALL),
    (Geom(1, 4, 2), ("hash_hits", "wraps", "harvests", "evictions", "exhausted")),
    (Geom(2, 2, 2), L_ALL),
    (Geom(2, 4, 2), L_ALL),
    (Geom(3, 4, 4), L_ALL),
    (Geom(2, 2, 8), L_ALL),                                               # more buckets than slots
    (Geom(3, 4, 2, tlb_entries=8, tlb_ways=2), L_ALL),
    (Geom(3, 16, 8), ("hash_hits", "wraps", "harvests", "epoch_flushes")),  # the default geometry
    (Geom(2, 32, 8), ("hash_hits", "wraps", "harvests", "epoch_flushes")),  # 64 slots: one full word
    (Geom(3, 32, 8), ("hash_hits", "wraps", "harvests", "epoch_flushes")),  # 96 slots: two words
]
FILL = [Geom(3, 32, 8), Geom(2, 32, 8), Geom(2, 4, 2)]


def compiled_state(c) -> dict:
    cfg = c.cfg
    V, H, S = cfg.vcpus, cfg.hash_entries, cfg.vcpus * cfg.entries
    dom, pte, dbits, vst = c.views["dom"], c.views["pte"], c.views["dbits"], c.views["vst"]
    gb = int(locked.garbage_base(S))
    hm, hi, hr = locked.V_HASH, locked.V_HASH + H, locked.V_HASH + 2 * H
    w = locked.dom_words(cfg.dom_layout, cfg.lock)
    return {
        "cursor": int(dom[w["cursor"]]),
        "epoch": int(dom[w["epoch"]]),
        "tlbflush_timestamp": int(dom[w["tlbflush_ts"]]),
        "tlbflush_clock": int(dom[tlb.D_TLBCLOCK]),
        "lock_free": locked.lock_free(c.views, cfg),
        "pte": [int(x) for x in pte[:S]],
        "inuse": bits(dbits, 0, S),
        "garbage": bits(dbits, gb, S),
        "bitmap_tails_clear": tail_clear(dbits, 0, S) and tail_clear(dbits, gb, S),
        "shadow_epoch": [int(vst[v, locked.V_SHADOW_EPOCH]) for v in range(V)],
        "tlbflush_time": [int(vst[v, abi.V_TLBFLUSH_TIME]) for v in range(V)],
        "hash": [[(int(vst[v, hm + b]), int(vst[v, hi + b]), int(vst[v, hr + b])) for b in range(H)]
                 for v in range(V)],
        **counters(c, "flush_all", "epoch_flushes", "harvests", "hash_hits", "exhaustions",
                   "refcount_errors"),
    }


def model_state(m: LockedModel) -> dict:
    return {
        "cursor": m.cursor,
        "epoch": m.epoch,
        "tlbflush_timestamp": m.tlbflush_timestamp,
        "tlbflush_clock": m.tlbflush_clock,
        "lock_free": not m.lock_held,
        "pte": pte_words(m.pte),
        "inuse": list(m.inuse),
        "garbage": list(m.garbage),
        "bitmap_tails_clear": True,
        "shadow_epoch": list(m.shadow_epoch),
        "tlbflush_time": list(m.tlbflush_time),
        "hash": [[e.as_tuple() for e in row] for row in m.hash],
        "flush_all": list(m.flush_all),
        "epoch_flushes": list(m.epoch_flushes),
        "harvests": list(m.harvests),
        "hash_hits": list(m.hash_hits),
        "exhaustions": list(m.exhaustions),
        "refcount_errors": list(m.refcount_errors),
    }


def summary(m: LockedModel) -> dict:
    return dict(wraps=sum(m.wraps), harvests=sum(m.harvests), evictions=sum(m.evictions),
                epoch_flushes=sum(m.epoch_flushes), hash_hits=sum(m.hash_hits))


def corruptions(model, c, live, rng):
    cfg = c.cfg
    out = []
    held = [(v, slot) for v, maps in live.items() for slot, _ in maps]
    S, H = model.slots, model.hash_entries
    gb = int(locked.garbage_base(S))
    free = [i for i in range(S) if not model.inuse[i]]
    hashed = [(v, b, e) for v, row in enumerate(model.hash) for b, e in enumerate(row) if e.idx != NOTINUSE]
    garbage = [i for i in range(S) if model.garbage[i]]
    if free:
        i = rng.choice(free)
        out.append((f"set inuse bit of free slot {i}",
                    lambda w, i=i: set_bit(w["dbits"], 0, i, True), "slot_leaks"))
    if hashed:
        v, b, e = rng.choice(hashed)
        out.append((f"change the PTE under vcpu {v} bucket {b} (slot {e.idx})",
                    lambda w, e=e: w["pte"].__setitem__(e.idx, (e.mfn + 1) | PRESENT), "invariant_violations"))
        out.append((f"bump the refcount of vcpu {v} bucket {b}",
                    lambda w, v=v, b=b: w["vst"].__setitem__((v, locked.V_HASH + 2 * H + b),
                                                             w["vst"][v, locked.V_HASH + 2 * H + b] + 1),
                    "invariant_violations"))
    if held:
        v, slot = rng.choice(held)
        out.append((f"clear the inuse bit of held slot {slot}",
                    lambda w, s=slot: set_bit(w["dbits"], 0, s, False), "invariant_violations"))
    if garbage:
        i = rng.choice(garbage)
        out.append((f"clear the garbage bit of slot {i}",
                    lambda w, i=i: set_bit(w["dbits"], gb, i, False), "slot_leaks"))
    # a ticket taken and never served: the tail one past the head (xen: the high half of the
    # one word; padded: the word after the head), or the mcs tail / tas word set
    lw = locked.dom_words(cfg.dom_layout, cfg.lock)["lock"]
    taken = {"xen": (lw, locks.TICKET_ONE), "padded": (lw + 1, 1)}[cfg.dom_layout] if cfg.lock == "ticket" \
        else (lw, 1)
    out.append(("leave the lock taken",
                lambda w, at=taken: w["dom"].__setitem__(at[0], w["dom"][at[0]] + at[1]), "invariant_violations"))
    return out


def check_run(t: dict) -> None:
    assert t["lock_acquisitions"] > 0 and t["tlb_flush_all"] > 0, t
