"""The cost model against Xen (docs/cost-model.md): the guest's own pages, --pcid, NMIs,
recursive walks and exposure, driven through the shipped loop on private state.

Mutations tried, each failing the test named:
- in ``tlb.flush_all``, leaving out the loop that drops every entry (the guest's pages stay
  cached): ``test_a_full_flush_costs_what_it_dropped_whether_1_or_100_maps_follow`` fails
  (0 walks after the flush instead of G);
- in ``config.params``, ``P_COST_FLUSH_ONE`` left at ``--cost-flush-one`` under --pcid:
  ``test_pcid_charges_two_or_four_invpcids`` fails;
- in ``kernels.irq_take``, deferring NMIs too (``if off:`` for ``if off and p[P_NMI] == 0:``):
  ``test_nmis_are_not_deferred_by_irq_save`` and ``test_locked_names_the_deadlock_of_an_nmi``
  fail (no NMI inside with interrupts off, no deadlock);
- in ``locked.map_slow``, dropping the owner check: the locked NMI test spins for ever on the
  ticket its own CPU holds (the deadlock the check names; tried under ``timeout``);
- in ``kernels.ops_loop``, ``again`` never true: ``test_a_recursive_walk_leaks_lockless_slots``
  fails (no leak);
- in ``kernels.reachable``, returning False: ``test_exposure_is_zero_for_kmap_local_and_not_for_lockless``
  fails (lockless's exposure 0).
"""

from __future__ import annotations

import pytest

from testbed import abi, config, harness, irq, kernels, loops, tlb
from testbed import variants as registry
from testbed.config import RunConfig

from conftest import testbed_cli

NO_COST = dict(cost_flush_one=0, cost_flush_all=0, cost_walk=0, cost_invpcid=0)


def _state(**kw):
    cfg = config.validate(RunConfig(**{"vcpus": 1, "frames": 256, "seed": 5, **NO_COST, **kw}))
    p = config.params(cfg)
    p[abi.P_CHUNK_CYCLES] = 1 << 62            # a count of operations, not a time budget
    views, t, args = harness.private_state(cfg, p)
    return cfg, p, views, t, args


# --- the guest's own pages -----------------------------------------------------------------


@pytest.mark.parametrize("burst", [1, 100])
def test_a_full_flush_costs_what_it_dropped_whether_1_or_100_maps_follow(burst):
    """The guest touches G pages before each hypercall: after one full flush its next pass walks
    all G of them again, however many maps the hypercall then makes (directmap: the maps
    themselves use no TLB entry, so every walk counted is the guest's)."""
    g = 48
    cfg, p, views, t, args = _state(variant="directmap", workload="guest", guest_work=1, burst=burst,
                                    guest_pages=g)
    row = views["stats"][0]
    assert p[abi.P_COST_REFILL] == 0            # the TLB itself charges what the flush dropped
    assert loops.run_ops(3, 0, *args) == abi.ST_OK
    assert row[abi.S_GUEST_WALKS] == g          # the first pass filled the TLB; the next two hit
    assert row[abi.S_GUEST_TOUCHES] == 3 * g
    tlb.flush_all(t, p, views["dom"], views["vst"][0], row)
    assert loops.run_ops(1, 0, *args) == abi.ST_OK
    assert row[abi.S_GUEST_WALKS] == 2 * g      # the flush dropped G entries: G walks, 1 map or 100
    assert loops.run_ops(1, 0, *args) == abi.ST_OK
    assert row[abi.S_GUEST_WALKS] == 2 * g


def test_the_old_refill_charged_only_the_maps_that_followed():
    """The contrast: without the guest's pages, --cost-refill charges only mapcache accesses, so
    a flush followed by one map is charged one walk where it dropped 64 entries."""
    cfg, p, views, t, args = _state(variant="directmap", workload="guest", guest_work=1, burst=1,
                                    guest_pages=0, cost_refill=64)
    row = views["stats"][0]
    assert loops.run_ops(2, 0, *args) == abi.ST_OK
    tlb.flush_all(t, p, views["dom"], views["vst"][0], row)
    assert loops.run_ops(1, 0, *args) == abi.ST_OK
    assert row[abi.S_REFILLS] == 1 and row[abi.S_GUEST_WALKS] == 0


def test_guest_pages_and_mapcache_slots_share_the_tlb():
    """lockless under the guest workload: the guest's pages are walked again as the slots evict
    them, and the slots miss more for the guest's pages than without them."""
    misses = {}
    for g in (0, 64):
        cfg, p, views, t, args = _state(variant="lockless", workload="guest", guest_work=1, burst=8,
                                        guest_pages=g)
        assert loops.run_ops(300, 0, *args) == abi.ST_OK
        row = views["stats"][0]
        misses[g] = int(row[abi.S_TLB_MISSES])
        if g:
            assert row[abi.S_GUEST_WALKS] > g   # more than the first pass: slots took entries
    assert misses[64] > misses[0]


def test_guest_pages_only_on_hypercall_workloads():
    cfg = config.validate(RunConfig(variant="lockless", vcpus=1, workload="uniform"))
    p = config.params(cfg)
    assert p[abi.P_GUEST_PAGES] == 0 and p[abi.P_COST_REFILL] == tlb.COST_REFILL
    assert RunConfig().guest_pages == tlb.GUEST_PAGES == 64


# --- --pcid ---------------------------------------------------------------------------------


@pytest.mark.parametrize("mode,invpcids", [("off", 0), ("on", 2), ("xpti", 4)])
def test_pcid_charges_two_or_four_invpcids(mode, invpcids):
    cfg = config.validate(RunConfig(variant="lockless", vcpus=1, pcid=mode, cost_invpcid=300))
    p = config.params(cfg)
    assert p[abi.P_COST_FLUSH_ONE] == (cfg.cost_flush_one if mode == "off" else invpcids * 300)
    assert tlb.PCID_MODES[mode] == max(1, invpcids)


def test_bad_pcid_is_refused_in_one_line():
    r = testbed_cli("run", "--variant", "lockless", "--pcid", "maybe", "--duration", "0.2")
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1, r.stderr
    assert "--pcid" in r.stderr and "off, on, xpti" in r.stderr


# --- NMIs -----------------------------------------------------------------------------------


def _nmi_at(variant, k, nmi=True, **kw):
    """One operation of the interrupt loop with an interrupt pending at its k-th arrival point."""
    cfg, p, views, t, args = _state(variant=variant, nmi_rate=1000.0 if nmi else 0.0,
                                    irq_rate=0.0 if nmi else 1000.0, **kw)
    p[abi.P_IRQ_INTERVAL] = irq.NO_TIMER        # no timed arrivals: the test places them
    views["vst"][0, abi.V_IRQ_PENDING] = k
    st = loops.run_ops(1, 0, *args)
    return st, views["stats"][0], cfg, views


@pytest.mark.parametrize("variant", ["lockless", "percpu"])
def test_nmis_are_not_deferred_by_irq_save(variant):
    """At a point inside map with interrupts off, an interrupt is deferred; an NMI is taken there."""
    inside_off = deferred = 0
    # an interrupt handler's slot counts toward the walk rule (an NMI's does not): percpu's 16 need one more
    more = {"entries": 17} if variant == "percpu" else {}
    for k in range(1, 9):
        st, row, _, _ = _nmi_at(variant, k, nmi=False, **more)
        assert row[abi.S_NMI_IRQS_OFF] == 0
        deferred += int(row[abi.S_IRQ_DEFERRED])
        st, row, _, _ = _nmi_at(variant, k, **more)
        assert st == abi.ST_OK or variant != "locked"
        assert row[abi.S_IRQ_DEFERRED] == 0
        inside_off += int(row[abi.S_NMI_IRQS_OFF])
    assert deferred > 0 and inside_off == deferred     # every point that defers an interrupt takes an NMI


def test_locked_names_the_deadlock_of_an_nmi():
    """An NMI with locked's lock held: its handler's map finds the lock its own CPU holds and the
    operation ends with ST_DEADLOCK instead of spinning for ever; an interrupt there is deferred."""
    seen = []
    for k in range(1, 9):
        st, row, _, _ = _nmi_at("locked", k)
        seen.append(st)
        if st == abi.ST_DEADLOCK:
            assert row[abi.S_DEADLOCKS] == 1 and row[abi.S_NMI_IRQS_OFF] == 1
        st_irq, row_irq, _, _ = _nmi_at("locked", k, nmi=False)
        assert st_irq == abi.ST_OK and row_irq[abi.S_DEADLOCKS] == 0
    assert abi.ST_DEADLOCK in seen and abi.STATUS_NAMES[abi.ST_DEADLOCK] == "deadlock"


@pytest.mark.parametrize("variant", [v.name for v in registry.REAL])
def test_nmi_rate_never_refuses_a_default_geometry(variant):
    for workload in config.WORKLOADS:
        config.validate(RunConfig(variant=variant, vcpus=2, workload=workload, nmi_rate=10000.0))


@pytest.mark.parametrize("value,words", [("-1", "between 0 (off)"), ("nan", "not a finite number"),
                                         ("inf", "not a finite number")])
def test_bad_nmi_rate_is_refused(value, words):
    r = testbed_cli("run", "--variant", "lockless", "--nmi-rate", value, "--duration", "0.2")
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1, r.stderr
    assert "--nmi-rate" in r.stderr and words in r.stderr


def test_nmi_and_irq_together_are_refused():
    r = testbed_cli("run", "--variant", "lockless", "--nmi-rate", "100", "--irq-rate", "100", "--duration", "0.2")
    assert r.returncode == 2 and "drop one" in r.stderr


# --- recursive walks ------------------------------------------------------------------------


def test_a_recursive_walk_leaks_lockless_slots():
    """ptwalk with --recursive: a table mapped again at a lower level with a colliding frame
    between (map A, map B in A's bucket, map A again, unmap all) leaks the seed's slot, with no
    interrupt at all; the same walk without recursion leaks nothing."""
    leaks = {}
    for q in (0.0, 0.5):
        cfg, p, views, t, args = _state(variant="lockless", workload="ptwalk", recursive=q, frames=64)
        assert p[abi.P_IRQ_INTERVAL] == 0
        st = loops.run_ops(400, 0, *args)
        assert st in (abi.ST_OK, abi.ST_EXHAUSTED)
        leaks[q] = registry.get("lockless").module.check(views, cfg, {})["slot_leaks"]
    assert leaks[0.0] == 0 and leaks[0.5] > 0


def test_recursive_is_a_ptwalk_option():
    r = testbed_cli("run", "--variant", "lockless", "--recursive", "0.5", "--duration", "0.2")
    assert r.returncode == 2 and "--workload ptwalk" in r.stderr
    r = testbed_cli("run", "--variant", "lockless", "--workload", "ptwalk", "--recursive", "1.5", "--duration", "0.2")
    assert r.returncode == 2 and "probability" in r.stderr


# --- exposure -------------------------------------------------------------------------------


def test_exposure_is_zero_for_kmap_local_and_not_for_lockless():
    """kmap-local clears the PTE and flushes at unmap: nothing stays reachable. lockless keeps a
    freed slot's PTE (and the bucket's slot) until it is reused: frames stay reachable."""
    out = {}
    for variant in ("kmap-local", "lockless", "directmap"):
        cfg, p, views, t, args = _state(variant=variant, lat_every=0)
        assert loops.run_ops(2000, 0, *args) == abi.ST_OK
        row = views["stats"][0]
        out[variant] = (int(row[abi.S_EXP_SAMPLES]), int(row[abi.S_EXP_OPS]), int(row[abi.S_EXP_REACHABLE]))
    assert out["kmap-local"][0] > 100 and out["kmap-local"][1] == 0 and out["kmap-local"][2] == 0
    assert out["lockless"][0] > 10 and out["lockless"][1] > 0 and out["lockless"][2] > 0
    assert out["directmap"] == (0, 0, 0)        # not measured: the direct map reaches everything
