"""The C port of the operation loop does what the compiled loop does.

``testbed/csrc/testbed_op.c`` is the yardstick ``scripts/bench.py --vs-c``
measures the compiled loop against; the comparison means something only while
the two do the same work. Both run the same number of operations from the same
seed on one vCPU, each on its own freshly initialised arrays, cost model as
configured; afterwards every array they wrote must be equal word for word
(stats row, frames and their counters, expect row, mapcache state, page
table, TLB, random state), except the counters that measure time.

Mutations that make it fail (both tried): in testbed_op.c ``flush_one``, delete
``a->srow[S_FLUSH_ONE] += 1;`` (10 lockless cases fail on tlb_flush_one); in
``translate``, take ``age = tlb[w * T_COLS + T_AGE]`` for an invalid way too
(the TLB fills other ways: 24 cases fail on tlb_hits / tlb_misses and the TLB).
The negative controls run as well, so the fault-bit paths are ported too.
"""

from __future__ import annotations

import numpy as np
import pytest

from testbed import abi, config, harness, kernels, native, tlb
from testbed import variants as registry
from testbed.config import RunConfig

# Counters that measure time: they differ between two runs of the same loop.
TIMED = (abi.S_LOCK_SPIN, abi.S_LOCK_HOLD, abi.S_LAT_CYCLES, abi.S_LAT_MAX, abi.S_TIMER_CYCLES)

CC = native.compiler()


@pytest.fixture(scope="module")
def nat():
    if CC is None:
        pytest.skip("no C compiler found ($CC, cc, gcc or clang): the C port of the loop cannot be built")
    n = native.Native(CC)
    yield n
    n.close()


def _fresh(cfg):
    p = config.params(cfg)
    p[abi.P_CHUNK_CYCLES] = 1 << 62            # a count of operations, not a time budget
    layout = harness.build_layout(cfg)
    views = layout.views(bytearray(layout.size))
    harness.init_state(views, cfg)
    tlbv = tlb.make_tlb(cfg.tlb_entries // cfg.tlb_ways, cfg.tlb_ways)
    rng = kernels.seed_state(cfg.seed, 0)
    return views, tlbv, rng, abi.kernel_args(views, p, tlbv, rng)


def _differences(a, b) -> list[str]:
    (va, ta, ra, _), (vb, tb, rb, _) = a, b
    out = []
    sa, sb = va["stats"][0].copy(), vb["stats"][0].copy()
    sa[list(TIMED)] = sb[list(TIMED)] = 0
    for col in np.flatnonzero(sa != sb):
        out.append(f"stats {abi.COUNTER_NAMES.get(int(col), int(col))}: numba {sa[col]} C {sb[col]}")
    if va["hist"][0].sum() != vb["hist"][0].sum():
        out.append(f"latency samples in the histogram: numba {va['hist'][0].sum()} C {vb['hist'][0].sum()}")
    for name in ("frames", "expect", "vst", "dom", "pte", "dbits", "live"):
        if not np.array_equal(va[name], vb[name]):
            out.append(f"{name} differs in {int(np.count_nonzero(va[name] != vb[name]))} words")
    if not np.array_equal(ta, tb):
        out.append("TLB differs")
    if ra[0] != rb[0]:
        out.append("random state differs")
    return out


# The designs the C port carries so far; percpu, kmap-local and locked's mcs and tas locks are not
# ported yet (see the README's Performance section).
PORTED = ("directmap", "locked", "lockless")
CASES = [(v, wl) for v in PORTED for wl in ("uniform", "hot", "ptwalk", "guest", "timers")]
CASES += [(c.name, "uniform") for c in registry.CONTROLS if c.module.NAME in PORTED]


@pytest.mark.parametrize("variant,workload", CASES)
@pytest.mark.parametrize("frames", [256, 4096])
def test_same_counters_as_compiled_loop(nat, variant, workload, frames):
    cost = dict(cost_flush_one=0, cost_flush_all=0, cost_walk=0) if frames == 4096 else {}
    cfg = config.validate(RunConfig(variant=variant, vcpus=1, frames=frames, workload=workload, seed=frames + 7,
                                    slack_us=1e6, guest_work=50, **cost))
    a, b = _fresh(cfg), _fresh(cfg)
    n = 3000
    st_jit = kernels.run_ops(n, 0, *a[3])
    st_c = nat.bind(*b[3])(n, 0)
    assert st_jit == st_c
    stats = a[0]["stats"][0]
    assert stats[abi.S_OPS] == n and stats[abi.S_WRITES] >= n
    assert _differences(a, b) == [], f"{variant} {workload} {frames} frames: C and numba loops disagree"
