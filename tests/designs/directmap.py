"""directmap: the floor, its reference model and the adapter.

A direct map of all machine memory: mapping an MFN is its direct-map address, the
MFN itself, below the mapcache range (its "slot" is ``mfn - MAPCACHE_VA``, below
0); unmapping does nothing; there is no state to compare but counters that stay 0.
"""

from __future__ import annotations

from testbed import abi

from . import Geom, counters

try:
    from model import Geometry
except ImportError:  # tests/ made a package
    from tests.model import Geometry


# --------------------------------------------------------------------------------------
# the reference model
# --------------------------------------------------------------------------------------


class DirectmapModel(Geometry):
    """No mapcache: an MFN's address is the MFN (docs/variants.md, "directmap")."""

    MAPCACHE_VA = abi.MAPCACHE_VA     # where the mapcache range starts: slots count from it

    def map(self, vcpu: int, mfn: int) -> int:
        return mfn - self.MAPCACHE_VA

    def unmap(self, vcpu: int, slot: int) -> None:
        pass

    def leaks(self, live) -> int:
        return 0


# --------------------------------------------------------------------------------------
# the adapter: what the differential tests need
# --------------------------------------------------------------------------------------

Model = DirectmapModel
PER_VCPU = False
IRQ_GEOM = Geom(2, 8, 4, levels=2)
GEOMS = [(Geom(1, 1, 1), ("maps", "unmaps")), (Geom(3, 4, 2), ("maps", "unmaps"))]
FILL = []                                   # nothing to exhaust
COUNTERS = ("hash_hits", "flush_one", "flush_all", "exhaustions", "lock_acquisitions")


def compiled_state(c) -> dict:
    return counters(c, *COUNTERS)


def model_state(m: DirectmapModel) -> dict:
    return {key: [0] * m.vcpus for key in COUNTERS}


def summary(m: DirectmapModel) -> dict:
    return {}


def corruptions(model, c, live, rng):
    """Nothing: a direct map keeps no state a corruption could touch."""
    return []
