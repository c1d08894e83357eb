"""percpu: the ASI series' per-vCPU mapcache, its reference model and the adapter."""

from __future__ import annotations

from testbed.variants import percpu

from . import PRESENT, Geom, bits, counters, pte_words, set_bit, tail_clear

try:
    from model import NOTINUSE, BadUnmap, Exhausted, Geometry, HashEntry, RefcountError
except ImportError:  # tests/ made a package
    from tests.model import NOTINUSE, BadUnmap, Exhausted, Geometry, HashEntry, RefcountError


# --------------------------------------------------------------------------------------
# the reference model
# --------------------------------------------------------------------------------------


class PercpuModel(Geometry):
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
# the adapter: what the differential tests need
# --------------------------------------------------------------------------------------


Model = PercpuModel
PER_VCPU = True
SKIP = {"FAULT_NO_FLUSH": {"flush_all"}}
STALE_GEOM = Geom(2, 4, 2)
IRQ_GEOM = Geom(2, 8, 4, levels=2)

P_ALL = ("hash_hits", "wraps", "harvests", "evictions", "exhausted")
GEOMS = [
    (Geom(1, 1, 1), ("hash_hits", "wraps", "evictions", "exhausted")),   # one slot: never garbage
    (Geom(2, 2, 2), P_ALL),
    (Geom(1, 4, 2), P_ALL),
    (Geom(2, 4, 2), P_ALL),
    (Geom(3, 4, 4), P_ALL),
    (Geom(2, 2, 8), P_ALL),                                               # more buckets than slots
    (Geom(2, 4, 2, tlb_entries=8, tlb_ways=2), P_ALL),
    (Geom(2, 32, 8, levels=4), ("hash_hits", "wraps", "harvests")),       # the default geometry
    (Geom(1, 64, 8, levels=4), ("hash_hits", "wraps", "harvests")),       # one full word
    (Geom(2, 80, 8, levels=4), ("hash_hits",)),       # two words (the fill test wraps them)
]
FILL = [Geom(2, 80, 8, levels=4), Geom(2, 4, 2)]


def compiled_state(c) -> dict:
    cfg = c.cfg
    V, H, E = cfg.vcpus, cfg.hash_entries, cfg.entries
    hm, hi, hr, iu, gb, _ = percpu._offsets(H, E)
    vst = c.views["vst"]
    return {
        "pte": [int(x) for x in c.views["pte"][:V * E]],
        "cursor": [int(vst[v, percpu.V_CURSOR]) for v in range(V)],
        "hash": [[(int(vst[v, hm + b]), int(vst[v, hi + b]), int(vst[v, hr + b])) for b in range(H)]
                 for v in range(V)],
        "inuse": [bits(vst[v], iu, E) for v in range(V)],
        "garbage": [bits(vst[v], gb, E) for v in range(V)],
        "bitmap_tails_clear": all(tail_clear(vst[v], iu, E) and tail_clear(vst[v], gb, E) for v in range(V)),
        **counters(c, "flush_all", "flush_one", "harvests", "hash_hits", "exhaustions", "refcount_errors",
                   "lock_acquisitions"),
    }


def model_state(m: PercpuModel) -> dict:
    V = m.vcpus
    return {
        "pte": pte_words(m.pte),
        "cursor": list(m.cursor),
        "hash": [[e.as_tuple() for e in row] for row in m.hash],
        "inuse": [list(u) for u in m.inuse],
        "garbage": [list(g) for g in m.garbage],
        "bitmap_tails_clear": True,
        "flush_all": list(m.flush_all),
        "flush_one": [0] * V,
        "harvests": list(m.harvests),
        "hash_hits": list(m.hash_hits),
        "exhaustions": list(m.exhaustions),
        "refcount_errors": list(m.refcount_errors),
        "lock_acquisitions": [0] * V,
    }


def summary(m: PercpuModel) -> dict:
    return dict(wraps=sum(m.wraps), harvests=sum(m.harvests), evictions=sum(m.evictions),
                hash_hits=sum(m.hash_hits), flush_all=sum(m.flush_all))


def check_totals(tot: dict) -> None:
    # batched: one full flush per wrap that found a slot (an exhausted one has nothing to hand out),
    # and never an invlpg (the state comparison checks flush_one == 0)
    assert tot["flush_all"] == tot["wraps"] - tot["exhausted"], tot


def corruptions(model, c, live, rng):
    cfg = c.cfg
    out = []
    held = [(v, slot) for v, maps in live.items() for slot, _ in maps]
    E, H = cfg.entries, cfg.hash_entries
    hm, hi, hr, iu, gb, _ = percpu._offsets(H, E)
    free = [(v, i) for v in range(model.vcpus) for i in range(E) if not model.inuse[v][i]]
    hashed = [(v, b, e) for v, row in enumerate(model.hash) for b, e in enumerate(row) if e.idx != NOTINUSE]
    garbage = [(v, i) for v in range(model.vcpus) for i in range(E) if model.garbage[v][i]]
    if free:
        v, i = rng.choice(free)
        out.append((f"set inuse bit of free slot {i} of vcpu {v}",
                    lambda w, v=v, i=i: set_bit(w["vst"][v], iu, i, True), "slot_leaks"))
        out.append((f"give free slot {i} of vcpu {v} a PTE",
                    lambda w, v=v, i=i: w["pte"].__setitem__(v * E + i, 5 | PRESENT), "invariant_violations"))
    if hashed:
        v, b, e = rng.choice(hashed)
        out.append((f"change the PTE under vcpu {v} bucket {b} (slot {e.idx})",
                    lambda w, v=v, e=e: w["pte"].__setitem__(v * E + e.idx, (e.mfn + 1) | PRESENT),
                    "invariant_violations"))
        out.append((f"bump the refcount of vcpu {v} bucket {b}",
                    lambda w, v=v, b=b: w["vst"].__setitem__((v, hr + b), w["vst"][v, hr + b] + 1),
                    "invariant_violations"))
        out.append((f"send vcpu {v} bucket {b}'s slot {e.idx} to garbage",
                    lambda w, v=v, e=e: set_bit(w["vst"][v], gb, e.idx, True), "invariant_violations"))
    if held:
        v, slot = rng.choice(held)
        out.append((f"clear the inuse bit of held slot {slot}",
                    lambda w, v=v, i=slot - v * E: set_bit(w["vst"][v], iu, i, False), "invariant_violations"))
    if garbage:
        v, i = rng.choice(garbage)
        out.append((f"clear the garbage bit of slot {i} of vcpu {v}",
                    lambda w, v=v, i=i: set_bit(w["vst"][v], gb, i, False), "slot_leaks"))
    return out


def check_run(t: dict) -> None:
    # batched: full flushes at wraps, never an invlpg
    assert t["lock_acquisitions"] == 0 and t["tlb_flush_one"] == 0, t
