"""kmap-local: Linux's kmap_local_page, its reference model and the adapter."""

from __future__ import annotations

from testbed.variants import kmap_local

from . import PRESENT, Geom, counters, pte_words

try:
    from model import BadUnmap, Exhausted, Geometry, OrderError
except ImportError:  # tests/ made a package
    from tests.model import BadUnmap, Exhausted, Geometry, OrderError


# --------------------------------------------------------------------------------------
# the reference model
# --------------------------------------------------------------------------------------


class KmapLocalModel(Geometry):
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
# the adapter: what the differential tests need
# --------------------------------------------------------------------------------------


Model = KmapLocalModel
PER_VCPU = True
LIFO = True
SKIP = {"FAULT_NO_FLUSH": {"flush_one"}}
STALE_GEOM = Geom(2, 4, 2)
IRQ_GEOM = Geom(2, 8, 4, levels=2)

GEOMS = [
    (Geom(1, 1, 1), ("exhausted", "flush_one")),
    (Geom(2, 2, 1), ("exhausted", "flush_one")),
    (Geom(3, 4, 2), ("exhausted", "flush_one")),
    (Geom(2, 4, 2, tlb_entries=8, tlb_ways=2), ("exhausted", "flush_one")),
    (Geom(2, 16, 8, levels=4), ("flush_one",)),                           # Linux's KM_MAX_IDX
]
FILL = [Geom(2, 70, 1), Geom(2, 16, 8, levels=4)]


def compiled_state(c) -> dict:
    V, E = c.cfg.vcpus, c.cfg.entries
    return {
        "pte": [int(x) for x in c.views["pte"][:V * E]],
        "top": [int(c.views["vst"][v, kmap_local.V_TOP]) for v in range(V)],
        **counters(c, "flush_one", "flush_all", "exhaustions", "bug_on_present", "hash_hits",
                   "lock_acquisitions"),
    }


def model_state(m: KmapLocalModel) -> dict:
    V = m.vcpus
    return {
        "pte": pte_words(m.pte),
        "top": [len(s) for s in m.stack],
        "flush_one": list(m.flush_one),
        "flush_all": [0] * V,
        "exhaustions": list(m.exhaustions),
        "bug_on_present": list(m.bug_on_present),
        "hash_hits": [0] * V,
        "lock_acquisitions": [0] * V,
    }


def summary(m: KmapLocalModel) -> dict:
    return dict(flush_one=sum(m.flush_one))


def check_totals(tot: dict) -> None:
    assert tot["flush_one"] == tot["unmaps"], tot       # one invlpg per unmap


def corruptions(model, c, live, rng):
    E = c.cfg.entries
    out = []
    held = [(v, slot) for v, maps in live.items() for slot, _ in maps]
    v = rng.randrange(model.vcpus)
    top = len(model.stack[v])
    if top < E:
        out.append((f"leave a PTE above the top of vcpu {v}",
                    lambda w, s=v * E + top: w["pte"].__setitem__(s, 5 | PRESENT), "slot_leaks"))
    out.append((f"push vcpu {v}'s top",
                lambda w, v=v: w["vst"].__setitem__((v, kmap_local.V_TOP), w["vst"][v, kmap_local.V_TOP] + 1),
                "invariant_violations"))
    if held:
        v, slot = rng.choice(held)
        out.append((f"change the PTE of held slot {slot}",
                    lambda w, s=slot: w["pte"].__setitem__(s, (int(w["pte"][s]) + 1) | PRESENT),
                    "invariant_violations"))
    return out


def check_run(t: dict) -> None:
    # an invlpg per unmap, no hash
    assert t["lock_acquisitions"] == 0 and t["hash_hits"] == 0 and t["tlb_flush_one"] == t["maps"], t
    assert t["tlb_flush_all"] == 0, t
