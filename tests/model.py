"""What the plain-Python reference models of the designs share, and the models of the loop.

Each design's model is in its own file, ``tests/designs/<module>.py`` (its
``Model``), written from the design (docs/variants.md and the algorithms it
points to), not from the compiled variants: no model imports ``testbed``. Each
model runs one operation at a time (the sequential
specification: no interleaving inside an operation), keeps its own plain Python
state, and raises instead of returning a status:

- ``map(vcpu, mfn)`` returns the global slot index (the address is
  ``MAPCACHE_VA + slot``), or raises ``Exhausted`` (Xen's BUG when no slot is
  left) or ``RefcountError`` (a reference count wrapped);
- ``unmap(vcpu, slot)`` returns nothing, or raises ``RefcountError`` (a count
  would go below zero), ``BadUnmap`` (the slot is not mapped) or ``OrderError``
  (a stack design's unmap below its top).

A PTE is modelled as the MFN it maps, or ``None`` when empty. TLBs are not
modelled; the flushes the designs do are only counted. Where a design leaves a
choice open, its model takes the real code's, and says so in its docstring.

Here: the errors, the hash entry and the geometry the models share; the
operation stream one vCPU's loop draws (``WorkloadModel``); an interrupt on any
model (``interrupt``). ``LockedModel`` and the other design models are still
importable from here by their class names (``from model import LockedModel``).
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


class Geometry:
    """The geometry the models share: vCPUs, slots per vCPU, hash buckets."""

    def __init__(self, vcpus: int, entries: int, hash_entries: int):
        if vcpus < 1 or entries < 1 or not _pow2(hash_entries):
            raise ValueError(f"bad geometry: vcpus={vcpus} entries={entries} hash={hash_entries}")
        self.vcpus = vcpus
        self.entries = entries
        self.hash_entries = hash_entries
        self.slots = vcpus * entries


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


def __getattr__(name: str):
    """A design's model by its class name (``LockedModel``: tests/designs/locked.py's ``Model``)."""
    if name.endswith("Model") and name != "WorkloadModel":
        from testbed import variants as registry
        try:
            from designs import adapter
        except ImportError:  # tests/ made a package
            from tests.designs import adapter
        for m in registry.MODULES:
            a = adapter(m)
            if a.Model.__name__ == name:
                return a.Model
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
