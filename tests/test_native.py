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
In the designs ported later (tried together): in
``tas_lock`` (csrc/locks.h), delete ``srow[S_LOCK_ACQ] += 1;``, and in ``percpu_map`` (csrc/variants/percpu.h), delete
``if (freed) srow[S_HARVEST] += 1;`` (22 cases fail: locked under tas on all
five workloads, percpu on all five and percpu-noflush, at both frame counts).
The negative controls run as well, so the fault-bit paths are ported too.
Simulated interrupts (``testbed/irq.py``) come from the clock in a real run, so
here both loops get the same interrupts made pending at the same chosen points
(``test_same_state_with_interrupts_at_chosen_points``).
"""

from __future__ import annotations

import numpy as np
import pytest

from testbed import abi, config, harness, irq, kernels, loops, native, tlb
from testbed import variants as registry
from testbed.config import RunConfig

# Counters that measure time: they differ between two runs of the same loop.
TIMED = (abi.S_LOCK_SPIN, abi.S_LOCK_HOLD, abi.S_LAT_CYCLES, abi.S_LAT_MAX, abi.S_TIMER_CYCLES,
         abi.S_HANDOFF_CYCLES, abi.S_EXP_CYCLES, abi.S_EXP_MAX_CYCLES, abi.S_EXP_T0)

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
    if p[abi.P_IRQ_INTERVAL] != 0:
        p[abi.P_IRQ_INTERVAL] = irq.NO_TIMER     # interrupts from the clock differ run to run: the tests place them
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


# Every design of the registry on every workload, locked under each of its locks (on every
# workload too: the workloads differ in how often the slow path, hence the lock, runs), and
# every negative control with the options it needs (their fault bits are ported as well).
# locked in each layout of its domain words too (the ticket lock is one word in one, two in the other).
CASES = [(v.name, wl, lock, layout) for v in registry.REAL for wl in config.WORKLOADS for lock in (v.locks or (None,))
         for layout in (v.dom_layouts or (None,))]
CASES += [(c.name, dict(c.options).get("workload", "uniform"), None, None) for c in registry.CONTROLS]


def test_port_numbers_variants_as_the_registry(nat):
    """The C port's variant ids and lock indices are the registry's (Native refuses a port that disagrees)."""
    assert native.variant_names().split(",") == [m.NAME for m in registry.MODULES]
    assert native.lock_names().split(",") == list(registry.VARIANTS["locked"].locks)
    assert native.dom_layout_names().split(",") == list(registry.VARIANTS["locked"].dom_layouts)


@pytest.mark.parametrize("variant,workload,lock,layout", CASES)
@pytest.mark.parametrize("frames", [256, 4096])
def test_same_counters_as_compiled_loop(nat, variant, workload, lock, layout, frames):
    """Mutation tried for the layouts: in csrc/variants/locked.h, ``#define X_LOCK 12`` (the C port's ticket
    word off the numba one's): 18 cases fail on dom, locked under the ticket lock in the xen layout
    on every workload and the locked controls, at both frame counts."""
    cost = dict(cost_flush_one=0, cost_flush_all=0, cost_walk=0) if frames == 4096 else {}
    options = dict(registry.get(variant).options)
    options.update(workload=workload)
    cfg = config.validate(RunConfig(variant=variant, vcpus=1, frames=frames, seed=frames + 7,
                                    slack_us=1e6, guest_work=50, lock=lock, dom_layout=layout, **cost, **options))
    a, b = _fresh(cfg), _fresh(cfg)
    n = 3000
    st_jit = loops.run_ops(n, 0, *a[3])
    st_c = nat.bind(*b[3])(n, 0)
    assert st_jit == st_c
    stats = a[0]["stats"][0]
    # a control may stop early (locked-garbage-held ends in a bad unmap): both at the same operation
    assert stats[abi.S_WRITES] >= stats[abi.S_OPS] and (stats[abi.S_OPS] == n or st_jit != abi.ST_OK)
    assert _differences(a, b) == [], f"{variant} {workload} {lock} {layout} {frames} frames: C and numba loops disagree"


@pytest.mark.parametrize("variant,lock,layout", [
    (v.name, lock, layout) for v in registry.REAL for lock in (v.locks or (None,))
    for layout in (v.dom_layouts or (None,))])
def test_each_variant_runs_its_own_loop_and_an_unknown_id_runs_nothing(variant, lock, layout):
    """run_ops runs the variant's own compiled loop (its id a constant, the dispatch folded away),
    which does the variant's work; the loop for an id the registry does not know compiles no design
    and answers ST_BAD_VARIANT without touching the state. (The word-for-word agreement of each
    own loop with the C port is test_kernel_and_c_port_agree_word_for_word.)

    Mutation: in dispatch.loops_source, give every loop id 0 (``k.ops_loop(0, ...``): every
    design but directmap then runs directmap's loop and makes no mapcache map, and this fails for
    each of them."""
    cfg = config.validate(RunConfig(variant=variant, vcpus=1, frames=256, workload="ptwalk", seed=11, lock=lock,
                                    dom_layout=layout))
    a, b = _fresh(cfg), _fresh(cfg)
    own = loops.loop(a[3][0])
    assert own is loops._LOOPS.LOOPS[registry.VARIANTS[variant].vid]
    assert own(2000, 0, *a[3]) == abi.ST_OK
    stats = a[0]["stats"][0]
    assert stats[abi.S_OPS] == 2000
    if variant != registry.BASELINE:
        assert stats[abi.S_TLB_MISSES] > 0 and (stats[abi.S_FLUSH_ONE] + stats[abi.S_FLUSH_ALL]) > 0
    assert loops._LOOPS.run_ops_any(2000, 0, *b[3]) == abi.ST_BAD_VARIANT
    assert b[0]["stats"][0][abi.S_OPS] == 0


IRQ_CASES = [(v.name, wl) for v in registry.REAL for wl in ("uniform", "ptwalk", "hot")]
IRQ_CASES += [(c.name, "uniform") for c in registry.CONTROLS if "irq_rate" in dict(c.options)]


def _pending_at_chosen_points(nat, a, b, seed):
    """Up to 300 slices of three operations in both loops, each after the same interrupt was made
    pending at the same k-th arrival point; both must end each slice with the same status."""
    rnd = np.random.default_rng(seed)
    st_jit = abi.ST_OK
    for _ in range(300):
        k = int(rnd.integers(1, 12))
        a[0]["vst"][0, abi.V_IRQ_PENDING] = b[0]["vst"][0, abi.V_IRQ_PENDING] = k
        st_jit = loops.run_ops(3, 0, *a[3])
        assert st_jit == nat.bind(*b[3])(3, 0)
        if st_jit != abi.ST_OK:
            break
    return st_jit


@pytest.mark.parametrize("variant,workload", IRQ_CASES)
def test_same_state_with_interrupts_at_chosen_points(nat, variant, workload):
    """Simulated interrupts in both loops (the interrupt loop, no timer), made pending at the same points.

    Before each slice of three operations both loops get the same pending
    interrupt, arriving at the k-th arrival point from there, and must agree
    word for word afterwards, interrupt counters included. Mutation: delete one
    ``irq_point(a, vcpu, irq);`` in lockless_map of csrc/variants/lockless.h and the lockless
    cases fail on irq_inside or the state (tried: 3 cases fail).
    """
    extra = {"nest": 8} if variant == "locked" else {}
    options = dict(registry.get(variant).options)
    options.update(workload=workload, irq_rate=1000.0)
    entries = registry.get(variant).module.DEFAULT_ENTRIES + irq.HANDLER_MAPS      # room for a handler
    cfg = config.validate(RunConfig(variant=variant, vcpus=1, frames=256, seed=31, entries=entries, **extra,
                                    **options))
    a, b = _fresh(cfg), _fresh(cfg)
    assert a[3][0][abi.P_IRQ_INTERVAL] == irq.NO_TIMER
    st_jit = _pending_at_chosen_points(nat, a, b, seed=5)
    taken = int(a[0]["stats"][0, abi.S_IRQ_TAKEN])
    assert taken > 100 or st_jit != abi.ST_OK, taken
    assert _differences(a, b) == [], f"{variant} {workload}: C and numba loops disagree with interrupts"


@pytest.mark.parametrize("variant,workload", [(v.name, wl) for v in registry.REAL for wl in ("uniform", "ptwalk")])
def test_same_state_with_nmis_at_chosen_points(nat, variant, workload):
    """NMIs (--nmi-rate: not deferred by irq_save) in both loops, made pending at the same points, as
    above; locked stops on its first NMI with the lock held (deadlock), at the same operation in both.
    Mutation tried: in testbed_op.c's irq_take, ``if (off)`` for ``if (off && a->p[P_NMI] == 0)``
    (NMIs deferred as interrupts): the 6 cases of the designs that disable interrupts (locked,
    lockless, percpu) fail; directmap and kmap-local (which never disables them) pass."""
    extra = {"nest": 8} if variant == "locked" else {}
    cfg = config.validate(RunConfig(variant=variant, vcpus=1, frames=256, seed=37, workload=workload,
                                    nmi_rate=1000.0, **extra))
    a, b = _fresh(cfg), _fresh(cfg)
    assert a[3][0][abi.P_IRQ_INTERVAL] == irq.NO_TIMER and a[3][0][abi.P_NMI] == 1
    _pending_at_chosen_points(nat, a, b, seed=7)
    assert int(a[0]["stats"][0, abi.S_IRQ_TAKEN]) > 0
    assert _differences(a, b) == [], f"{variant} {workload}: C and numba loops disagree with NMIs"


@pytest.mark.parametrize("variant", [v.name for v in registry.REAL])
def test_same_state_on_recursive_walks(nat, variant):
    """ptwalk with --recursive 0.5 (a level maps an earlier level's table again): the same draws, the
    same state; lockless leaks and may exhaust, at the same operation in both."""
    extra = {"nest": 8} if variant == "locked" else {}
    cfg = config.validate(RunConfig(variant=variant, vcpus=1, frames=256, seed=41, workload="ptwalk",
                                    recursive=0.5, **extra))
    a, b = _fresh(cfg), _fresh(cfg)
    st_jit = loops.run_ops(3000, 0, *a[3])
    assert st_jit == nat.bind(*b[3])(3000, 0)
    assert _differences(a, b) == [], f"{variant}: C and numba loops disagree on recursive walks"
