"""lockless: the seed's per-vCPU lockless mapcache, its reference model and the adapter.

Where the design leaves a choice open, the model takes the seed's: the refcount is
a uint8, a wrap to 0 on map is reported as ``RefcountError`` (the state keeps the
wrapped value), a decrement below 0 on unmap is refused with ``RefcountError``
(the state unchanged). Its model leaks by design (a slot whose MFN the bucket
caches elsewhere is never freed: ``MAY_LEAK``).
"""

from __future__ import annotations

from testbed.variants import lockless

from . import PRESENT, Geom, bits, counters, pte_words, set_bit, tail_clear

try:
    from model import NOTINUSE, BadUnmap, Exhausted, Geometry, RefcountError
except ImportError:  # tests/ made a package
    from tests.model import NOTINUSE, BadUnmap, Exhausted, Geometry, RefcountError


# --------------------------------------------------------------------------------------
# the reference model
# --------------------------------------------------------------------------------------


class LocklessModel(Geometry):
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
# the adapter: what the differential tests need
# --------------------------------------------------------------------------------------


Model = LocklessModel
PER_VCPU = True
MAY_LEAK = True
SKIP = {"FAULT_NO_FLUSH": {"flush_one"}}
STALE_GEOM = Geom(2, 4, 2)
IRQ_GEOM = Geom(2, 16, 4, levels=2)

LL_ALL = ("hash_hits", "replacements", "idle_frees", "exhausted", "leaks_max")
GEOMS = [
    (Geom(1, 2, 1), ("hash_hits", "replacements", "idle_frees", "exhausted")),
    (Geom(1, 4, 2), LL_ALL),
    (Geom(2, 4, 2), LL_ALL),
    (Geom(3, 3, 2), LL_ALL),
    (Geom(2, 2, 2, unchecked=True), ("hash_hits", "replacements", "idle_frees", "exhausted")),
    (Geom(2, 8, 4), LL_ALL),
    (Geom(2, 4, 2, tlb_entries=8, tlb_ways=2), LL_ALL),
    (Geom(2, 32, 8, levels=4), ("hash_hits", "replacements", "idle_frees", "leaks_max")),  # the default
    (Geom(1, 64, 32, levels=4), ("hash_hits", "replacements", "idle_frees", "leaks_max")),  # one full word
    (Geom(2, 80, 64, levels=4), ("hash_hits", "replacements", "idle_frees", "leaks_max")),  # two words
]
FILL = [Geom(2, 80, 64, levels=4), Geom(1, 64, 32, levels=4), Geom(2, 32, 8, levels=4), Geom(2, 4, 2)]


def compiled_state(c) -> dict:
    cfg = c.cfg
    V, H, E = cfg.vcpus, cfg.hash_entries, cfg.entries
    hm, hi, rc, iu, _ = lockless._offsets(H, E)
    vst = c.views["vst"]
    return {
        "pte": [int(x) for x in c.views["pte"][:V * E]],
        "hash": [[(int(vst[v, hm + b]), int(vst[v, hi + b])) for b in range(H)] for v in range(V)],
        "refcnt": [[int(vst[v, rc + i]) for i in range(E)] for v in range(V)],
        "inuse": [bits(vst[v], iu, E) for v in range(V)],
        "bitmap_tails_clear": all(tail_clear(vst[v], iu, E) for v in range(V)),
        **counters(c, "flush_one", "flush_all", "hash_hits", "exhaustions", "refcount_errors",
                   "lock_acquisitions"),
    }


def model_state(m: LocklessModel) -> dict:
    V = m.vcpus
    return {
        "pte": pte_words(m.pte),
        "hash": [list(zip(m.hash_mfn[v], m.hash_idx[v])) for v in range(V)],
        "refcnt": [list(r) for r in m.refcnt],
        "inuse": [list(u) for u in m.inuse],
        "bitmap_tails_clear": True,
        "flush_one": list(m.flush_one),
        "flush_all": [0] * V,
        "hash_hits": list(m.hash_hits),
        "exhaustions": list(m.exhaustions),
        "refcount_errors": list(m.refcount_errors),
        "lock_acquisitions": [0] * V,
    }


def summary(m: LocklessModel) -> dict:
    return dict(hash_hits=sum(m.hash_hits), idle_frees=sum(m.idle_frees), replacements=sum(m.hash_replacements),
                flush_one=sum(m.flush_one))


def corruptions(model, c, live, rng):
    cfg = c.cfg
    out = []
    held = [(v, slot) for v, maps in live.items() for slot, _ in maps]
    E, H = cfg.entries, cfg.hash_entries
    hm, hi, rc, iu, _ = lockless._offsets(H, E)
    free = [(v, i) for v in range(model.vcpus) for i in range(E) if not model.inuse[v][i]]
    hashed = [(v, b) for v in range(model.vcpus) for b in range(H) if model.hash_idx[v][b] != NOTINUSE]
    if free:
        v, i = rng.choice(free)
        out.append((f"set inuse bit of free slot {i} of vcpu {v}",
                    lambda w, v=v, i=i: set_bit(w["vst"][v], iu, i, True), "slot_leaks"))
        out.append((f"give free slot {i} of vcpu {v} a refcount",
                    lambda w, v=v, i=i: w["vst"].__setitem__((v, rc + i), 1), "invariant_violations"))
    if hashed:
        v, b = rng.choice(hashed)
        slot = v * E + model.hash_idx[v][b]
        mfn = model.hash_mfn[v][b]
        out.append((f"change the PTE under vcpu {v} bucket {b} (slot {slot})",
                    lambda w, s=slot, m=mfn: w["pte"].__setitem__(s, (m + 1) | PRESENT), "invariant_violations"))
    if held:
        v, slot = rng.choice(held)
        i = slot - v * E
        out.append((f"clear the inuse bit of held slot {slot}",
                    lambda w, v=v, i=i: set_bit(w["vst"][v], iu, i, False), "invariant_violations"))
        out.append((f"drop a reference of held slot {slot}",
                    lambda w, v=v, i=i: w["vst"].__setitem__((v, rc + i), w["vst"][v, rc + i] - 1),
                    "invariant_violations"))
    return out


def check_run(t: dict) -> None:
    assert t["lock_acquisitions"] == 0 and t["tlb_flush_one"] > 0, t
