"""The oracle's checks, each shown to catch what it was written for (testbed/oracle.py).

Every test names, in its docstring, the one-line mutation that was tried and made it fail.
The kernel checks are driven on private state in this process (no vCPU processes): the
shipped ``loops.run_ops`` and ``kernels.recheck``, on the arrays the harness lays out.
"""

from __future__ import annotations

import numpy as np
import pytest

from testbed import abi, config, harness, kernels, loops, oracle, tlb
from testbed import variants as registry
from testbed.config import RunConfig
from testbed.variants import locked, lockless

P = int(tlb.PTE_PRESENT)
VA = abi.MAPCACHE_VA


def _fresh(variant, **kw):
    cfg = config.validate(RunConfig(**{"variant": variant, "vcpus": 1, "frames": 64, "seed": 5, **kw}))
    p = config.params(cfg)
    p[abi.P_CHUNK_CYCLES] = 1 << 62            # a count of operations, not a time budget
    layout = harness.build_layout(cfg)
    views = layout.views(bytearray(layout.size))
    harness.init_state(views, cfg)
    tlbv = tlb.make_tlb(cfg.tlb_entries // cfg.tlb_ways, cfg.tlb_ways)
    return cfg, p, views, tlbv


def _ops(variant, n, **kw):
    """Run ``n`` operations of ``variant`` (a control's own options first) on one private vCPU."""
    options = {**dict(registry.get(variant).options), **kw}
    cfg, p, views, tlbv = _fresh(variant, **options)
    status = loops.run_ops(n, 0, *abi.kernel_args(views, p, tlbv, kernels.seed_state(cfg.seed, 0)))
    return status, views["stats"][0]


# --- the recheck before unmap ----------------------------------------------------------------


def test_recheck_sees_a_slot_reused_under_its_holder_and_a_stale_translation():
    """Mutation tried: in kernels.recheck, delete the PTE comparison: reused_held_slots stays 0 and
    the second assertion fails. (Looking the slot up with tlb.translate instead of tlb.peek would
    tick the LRU and the counters: the last assertion is there for that.)"""
    cfg, p, views, tlbv = _fresh("lockless")
    pte, frames, srow = views["pte"], views["frames"], views["stats"][0]
    pte[3] = 5 | P
    kernels.recheck(0, VA + 3, 5, p, pte, frames, srow, tlbv)
    assert (srow[abi.S_HELD_PTE], srow[abi.S_HELD_STALE], srow[abi.S_RECHECKS]) == (0, 0, 1)
    pte[3] = 6 | P                              # the slot now maps another frame: taken away while held
    kernels.recheck(0, VA + 3, 5, p, pte, frames, srow, tlbv)
    assert (srow[abi.S_HELD_PTE], srow[abi.S_HELD_STALE]) == (1, 1)
    # the PTE is right again, but the TLB still translates the slot to the other frame
    kernels.access(0, VA + 3, 6, p, pte, frames, views["expect"][0], srow, tlbv)   # fills slot 3 -> frame 6
    pte[3] = 5 | P
    before = tlbv.copy()
    hits, misses = srow[abi.S_TLB_HITS], srow[abi.S_TLB_MISSES]
    kernels.recheck(0, VA + 3, 5, p, pte, frames, srow, tlbv)
    assert (srow[abi.S_HELD_PTE], srow[abi.S_HELD_STALE]) == (1, 2)
    # the oracle looks without touching: no fill, no LRU tick, no TLB counter
    assert np.array_equal(before, tlbv) and (srow[abi.S_TLB_HITS], srow[abi.S_TLB_MISSES]) == (hits, misses)


def test_locked_garbage_held_is_caught_by_the_recheck_before_unmap():
    """locked-garbage-held clears the PTE of a slot a walk still holds; the recheck sees it first.

    Mutation tried: delete the call to ``recheck`` in run_ops: reused_held_slots stays 0 (the run
    still stops on a bad unmap, which is all the old checks saw)."""
    status, srow = _ops("locked-garbage-held", 200_000, vcpus=1, nest=8)
    assert srow[abi.S_HELD_PTE] >= 1, "the recheck did not see the held slot's PTE cleared"
    assert status == abi.ST_BAD_VA and srow[abi.S_REFCNT_ERR] == 0


def test_lockless_free_held_is_caught_when_a_later_map_reuses_the_held_slot():
    """A later map of the walk takes the slot freed under its holder; the holder's recheck sees
    the slot's PTE map the later MFN, and its translation reach the later frame.

    Mutation tried: delete the call to ``recheck`` in run_ops: both counters stay 0, and the
    control runs on unseen (no old check fires on this walk: the last assertion)."""
    status, srow = _ops("lockless-free-held", 20_000)
    assert srow[abi.S_HELD_PTE] >= 1 and srow[abi.S_HELD_STALE] >= 1
    assert srow[[abi.S_STALE, abi.S_REFCNT_ERR, abi.S_EXHAUSTED, abi.S_INVARIANT]].sum() == 0
    assert status == abi.ST_OK


def test_real_lockless_returns_no_held_slot_on_the_same_walk():
    """The same walk without the fault: the map-time check stays silent (it can pass, too)."""
    status, srow = _ops("lockless", 20_000, workload="ptwalk")
    assert status == abi.ST_OK and srow[abi.S_OPS] == 20_000
    assert (srow[abi.S_HELD_PTE], srow[abi.S_HELD_STALE]) == (0, 0)
    assert srow[abi.S_RECHECKS] == srow[abi.S_MAPS]


# --- --refcount-wrap --------------------------------------------------------------------------


def test_refcount_wrap_stop_ends_the_256_deep_nest_with_a_refcount_error():
    status, srow = _ops("lockless", 100, workload="nest-same", nest=256)
    assert status == abi.ST_REFCOUNT and srow[abi.S_REFCNT_ERR] == 1


def test_refcount_wrap_wrap_shows_the_held_slot_freed_and_reused():
    """With the seed's uint8_t, the slot held 256 times reads as free: a colliding map frees it, a
    later map reuses it, and the oracle sees the held mappings reach another frame.

    Mutation tried: make ``--refcount-wrap wrap`` keep the refcount error in lockless.map_page
    (``if r == 0:``): the walk stops with ST_REFCOUNT and the first assertion fails."""
    status, srow = _ops("lockless", 2_000, workload="nest-same", nest=256, refcount_wrap="wrap")
    assert status == abi.ST_OK and srow[abi.S_REFCNT_ERR] == 0
    assert srow[abi.S_HELD_STALE] >= 1 and srow[abi.S_HELD_PTE] >= 1


def test_wrap_run_ends_failure_by_a_stale_translation_or_a_reused_held_slot(exclusive, no_leftovers):
    """The done-when line, through the harness: FAILURE, and not by refcount_error."""
    res = harness.run(RunConfig(variant="lockless", workload="nest-same", nest=256, refcount_wrap="wrap", vcpus=2,
                                duration=1.0, warmup=0.0, seed=3, frames=256))
    c = res["checks"]
    assert res["verdict"] == "FAILURE"
    assert c["held_stale_translations"] > 0 or c["reused_held_slots"] > 0, c
    assert c["refcount_errors"] == 0 and (res["failure"] is None or res["failure"]["kind"] != "refcount_error")
    assert res["config"]["refcount_wrap"] == "wrap"


# --- check(): every variant uses the MFNs of live mappings ------------------------------------


def _locked_base():
    """A consistent locked state: vCPU 0 caches MFN 13 in slot 2, vCPU 1 holds MFN 20 in slot 7."""
    cfg, _, views, _ = _fresh("locked", vcpus=2)
    h = cfg.hash_entries
    views["dbits"][0] |= (1 << 2) | (1 << 7)
    views["pte"][2], views["pte"][7] = 13 | P, 20 | P
    views["vst"][0, locked.V_HASH + 13 % h] = 13
    views["vst"][0, locked.V_HASH + h + 13 % h] = 2
    live = {0: [], 1: [(VA + 7, 20)]}
    assert locked.check(views, cfg, live) == {"slot_leaks": 0, "invariant_violations": 0}
    return cfg, views, live


def _garbage(cfg, views, slot):
    views["dbits"][locked.garbage_base(cfg.vcpus * cfg.entries) + slot // 64] |= 1 << (slot % 64)


def test_locked_check_flags_a_garbage_slot_that_is_cached_or_held():
    """Mutation tried: delete ``if bit(gb, idx): bad += 1`` in locked.check: both counts drop by one."""
    cfg, views, live = _locked_base()
    _garbage(cfg, views, 2)                     # cached by vCPU 0, and its PTE still present
    assert locked.check(views, cfg, live)["invariant_violations"] == 2
    cfg, views, live = _locked_base()
    _garbage(cfg, views, 7)                     # held by vCPU 1, and its PTE still present
    assert locked.check(views, cfg, live)["invariant_violations"] == 2


def test_locked_check_flags_a_garbage_slot_whose_pte_is_present():
    """Mutation tried: delete the loop over garbage slots' PTEs in locked.check: 0 instead of 1."""
    cfg, views, live = _locked_base()
    views["dbits"][0] |= 1 << 9
    _garbage(cfg, views, 9)
    views["pte"][9] = 4 | P
    assert locked.check(views, cfg, live) == {"slot_leaks": 0, "invariant_violations": 1}
    views["pte"][9] = 0                         # zapped first, as unmap does: fine
    assert locked.check(views, cfg, live) == {"slot_leaks": 0, "invariant_violations": 0}


def test_locked_check_flags_one_slot_held_or_cached_by_two_vcpus():
    """Mutation tried: delete ``if owner.setdefault(idx, v) != v: bad += 1``: 0 instead of 1."""
    cfg, views, live = _locked_base()
    live[1].append((VA + 2, 13))                # vCPU 1 holds the slot vCPU 0 caches
    assert locked.check(views, cfg, live)["invariant_violations"] == 1


def test_every_variant_check_uses_the_live_mappings_mfn():
    """Mutation tried: in lockless.check, delete the comparison of a held slot's PTE with the live
    MFN (what ``for va, _mfn in ...`` did before): the lockless assertion fails. The locked and
    directmap assertions guard the same comparison in their checks."""
    cfg, views, live = _locked_base()
    assert locked.check(views, cfg, {0: [], 1: [(VA + 7, 21)]})["invariant_violations"] == 1
    cfg, _, views, _ = _fresh("lockless")
    _, _, rc, iu, _ = lockless._offsets(cfg.hash_entries, cfg.entries)
    views["vst"][0, iu] |= 1 << 3
    views["vst"][0, rc + 3] = 1
    views["pte"][3] = 5 | P
    assert lockless.check(views, cfg, {0: [(VA + 3, 5)]}) == {"slot_leaks": 0, "invariant_violations": 0}
    assert lockless.check(views, cfg, {0: [(VA + 3, 6)]})["invariant_violations"] == 1
    cfg, _, views, _ = _fresh("directmap")
    check = registry.get("directmap").module.check
    assert check(views, cfg, {0: [(5, 5)]})["invariant_violations"] == 0
    assert check(views, cfg, {0: [(5, 6)]})["invariant_violations"] == 1
    for name in ("percpu", "kmap-local"):        # these two compared the MFN already
        cfg, _, views, _ = _fresh(name)
        mod = registry.get(name).module
        assert mod.check(views, cfg, {0: [(VA, 5)]})["invariant_violations"] >= 1


def test_locked_garbage_pte_control_is_caught_only_by_the_new_check():
    """Its fault leaves stale_translations and the kernel counters at 0: only check() sees it.

    Mutation tried: the same as test_locked_check_flags_a_garbage_slot_whose_pte_is_present
    (the loop over garbage slots' PTEs deleted): both tests fail."""
    cfg, p, views, tlbv = _fresh("locked-garbage-pte", vcpus=1)
    status = loops.run_ops(20_000, 0, *abi.kernel_args(views, p, tlbv, kernels.seed_state(cfg.seed, 0)))
    srow = views["stats"][0]
    assert status == abi.ST_OK
    assert srow[list(oracle.KERNEL_VIOLATIONS)].sum() == 0
    assert oracle.variant_checks(views, cfg)["invariant_violations"] > 0


# --- the module: checks and verdict -----------------------------------------------------------


def test_every_counted_check_is_in_the_verdict():
    """Mutation tried: leave reused_held_slots out of CHECK_KEYS: violations is 0 and the verdict SUCCESS."""
    totals = {k: 0 for k in abi.COUNTER_NAMES.values()}
    stats = np.zeros((1, abi.N_STATS), np.int64)
    for key in ("held_stale_translations", "reused_held_slots"):
        t = dict(totals, **{key: 1})
        c = oracle.checks(totals=t, stats=stats, lost_writes=0, writes_reported=0, writes_counted=0,
                          variant_checks={}, failure=None, extra=None, complete=True)
        assert c["violations"] == 1 and oracle.verdict(c, None, None) == "FAILURE", key
    c = oracle.checks(totals=totals, stats=stats, lost_writes=0, writes_reported=0, writes_counted=0,
                      variant_checks={}, failure=None, extra=None, complete=True)
    assert oracle.verdict(c, None, None) == "SUCCESS"


@pytest.mark.parametrize("name", [v.name for v in registry.CONTROLS])
def test_each_control_names_options_the_config_accepts(name):
    v = registry.get(name)
    config.validate(RunConfig(variant=name, vcpus=2, **dict(v.options)))
