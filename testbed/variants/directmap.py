"""directmap: the floor every other variant is measured against.

With a direct map of all machine memory the hypervisor needs no mapping work at
all: "mapping" an MFN is computing its address in the direct map, and
unmapping is nothing. No slot, no page-table entry, no TLB fill through the
mapcache range, no lock. What remains of an operation is the access itself:
the check that the frame carries its own MFN and the write counter bump, the
same work every variant does after its map. The difference between this
variant and another is therefore the cost of that other variant's mapping.

Simplification: a real direct map is itself translated by the TLB (with large
pages, rarely missing); the testbed treats those translations as free.
"""

from ..jit import inline_kernel

NAME = "directmap"
DESCRIPTION = "no mapping work: the MFN's direct-map address (the baseline)"
DEFAULT_ENTRIES = 16
GEOMETRY = {"entries": "none used: a direct map has no slots (16 is the testbed's placeholder)",
            "hash": "none used", "pool": "none: every frame is always mapped"}
MAX_ENTRIES = 1 << 16


def state_shape(cfg):
    """Words of shared state: (domain words, domain bitmap words, per-vCPU row words)."""
    return 0, 0, 0


def init_state(views, cfg):
    pass


@inline_kernel
def map_page(vcpu, mfn, p, dom, pte, dbits, vrow, srow, tlb):
    return mfn


@inline_kernel
def unmap_page(vcpu, va, p, dom, pte, dbits, vrow, srow, tlb):
    return 0


def check(views, cfg, live_by_vcpu, victims=frozenset()):
    """A live mapping's address is its MFN's place in the direct map; nothing else to check."""
    bad = sum(1 for v, live in live_by_vcpu.items() if v not in victims for va, mfn in live if va != mfn)
    return {"slot_leaks": 0, "invariant_violations": bad}
