"""Faithful to Xen: the domain and its idle vCPUs, the designs' geometry read from their sources,
the timers as FreeBSD 10.4 and Xen count them, the TLB clock through its wrap, and every check
the verdict counts fed through its real input (docs/fidelity.md is the table these defend).
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np
import pytest

from testbed import abi, config, harness, kernels, loops, native, oracle, results, runplan, tlb
from testbed import variants as registry
from testbed.config import RunConfig
from testbed.errors import UsageError
from testbed.variants import locked, lockless, percpu

try:
    from model import LockedModel
except ImportError:  # tests/ made a package
    from tests.model import LockedModel


def _reference() -> Path | None:
    """The read-only reference tree beside the checkout (``shared/xen`` and ``shared/seed``), if any."""
    for parent in Path(__file__).resolve().parents:
        if (parent / "shared" / "xen" / "README.md").exists():
            return parent / "shared"
    return None


REF = _reference()
needs_ref = pytest.mark.skipif(REF is None, reason="no reference tree (shared/xen and shared/seed beside the "
                                                   "checkout): the geometry cannot be read from Xen's headers")


def _define(text: str, name: str) -> str:
    m = re.search(rf"^\s*#\s*define\s+{name}\s+(.+?)\s*$", text, re.M)
    assert m, f"no #define {name}"
    return m.group(1)


def _eval_define(text: str, name: str, env: dict) -> int:
    """A header's #define evaluated as an integer expression over the names in ``env``."""
    expr = _define(text, name)
    return int(eval(expr, {"__builtins__": {}}, env))        # noqa: S307 (the reference tree's own header)


def _shapes(cfg) -> dict:
    return {f.name: tuple(f.shape) for f in harness.build_layout(cfg).fields}


# --- geometry from the sources -------------------------------------------------------------


@needs_ref
@pytest.mark.parametrize("tree,include", [("head", "xen/arch/x86/include/asm"), ("seed-base", "xen/include/asm-x86")])
def test_locked_geometry_is_xens(tree, include):
    """locked's defaults are what Xen's headers say, read from them: MAPCACHE_VCPU_ENTRIES
    (CONFIG_PAGING_LEVELS squared), MAPHASH_ENTRIES, PAGING_LEVELS, and a pool of max_vcpus *
    MAPCACHE_VCPU_ENTRIES (mapcache_domain_init). Mutation tried (the module attribute patched):
    locked.DEFAULT_ENTRIES = 32: fails on MAPCACHE_VCPU_ENTRIES."""
    base = REF / "xen" / tree
    cfg_h = (base / include / "config.h").read_text()
    dom_h = (base / include / "domain.h").read_text()
    levels = int(_define(cfg_h, "CONFIG_PAGING_LEVELS"))
    entries = _eval_define(cfg_h, "MAPCACHE_VCPU_ENTRIES", {"CONFIG_PAGING_LEVELS": levels})
    assert locked.DEFAULT_ENTRIES == entries
    assert RunConfig.levels == levels
    assert RunConfig.hash_entries == int(_define(dom_h, "MAPHASH_ENTRIES"))
    src = (base / "xen/arch/x86/domain_page.c").read_text()
    assert "d->max_vcpus * MAPCACHE_VCPU_ENTRIES" in src, "mapcache_domain_init no longer sizes for max_vcpus"
    cfg = config.validate(RunConfig(variant="locked", vcpus=1, domain_vcpus=32))
    assert config.params(cfg)[abi.P_SLOTS] == 32 * entries
    assert _shapes(cfg)["pte"] == (32 * entries,)


@needs_ref
def test_lockless_geometry_is_the_seeds():
    """lockless's MAPCACHE_VCPU_ENTRIES is the seed patch's #define, read from the patch, and the
    patch keeps MAPHASH_ENTRIES (it touches no #define of it). Mutation tried (patched):
    lockless.DEFAULT_ENTRIES = 16: fails."""
    patch = (REF / "seed" / "per-vcpu-mapcache-patch.txt").read_text()
    added = [line[1:] for line in patch.splitlines() if line.startswith("+") and not line.startswith("+++")]
    assert lockless.DEFAULT_ENTRIES == int(_define("\n".join(added), "MAPCACHE_VCPU_ENTRIES"))
    assert not any(re.search(r"#\s*define\s+MAPHASH_ENTRIES", line) for line in added)


def test_every_design_names_its_geometry_source():
    """Each design's GEOMETRY names where entries, hash and pool come from, and the entries source
    states the default the module uses (percpu's and kmap-local's sources are not in the
    reference tree: the ASI series and Linux's kmap_size.h). Mutation tried (patched): percpu
    back to DEFAULT_ENTRIES = 32: fails (its source says 16)."""
    for v in registry.REAL:
        g = v.module.GEOMETRY
        assert set(g) == {"entries", "hash", "pool"}
        if not v.baseline:
            assert re.search(rf"\b{v.module.DEFAULT_ENTRIES}\b", g["entries"]), (v.name, g["entries"])
    assert percpu.DEFAULT_ENTRIES == 16 and "ASI" in percpu.GEOMETRY["entries"]
    assert "KM_MAX_IDX 16" in registry.get("kmap-local").module.GEOMETRY["entries"]


def test_variants_json_keeps_default_entries_and_adds_the_source():
    from testbed import textreport

    for d in textreport.variants_table():
        if d["kind"] == "real":
            m = registry.get(d["name"]).module
            assert d["default_entries"] == m.DEFAULT_ENTRIES
            assert d["default_entries_source"] == m.GEOMETRY["entries"] and d["geometry"] == m.GEOMETRY


# --- the domain and its idle vCPUs ------------------------------------------------------------


def test_domain_vcpus_default_and_refusals(monkeypatch):
    """--domain-vcpus defaults to --vcpus; below it, beyond MAX_VIRT_CPUS, or beyond the memory
    available now: UsageError naming --domain-vcpus, before anything starts."""
    assert config.validate(RunConfig(vcpus=2)).domain_vcpus == 2
    with pytest.raises(UsageError, match=r"--domain-vcpus 1: below --vcpus 2"):
        config.validate(RunConfig(vcpus=2, domain_vcpus=1))
    with pytest.raises(UsageError, match=r"--domain-vcpus 9000: .*MAX_VIRT_CPUS"):
        config.validate(RunConfig(vcpus=1, domain_vcpus=9000))
    from testbed import limits

    monkeypatch.setattr(limits, "available_bytes", lambda: 1 << 20)
    with pytest.raises(UsageError, match=r"^--domain-vcpus 4096: the domain's shared state needs \d+ MiB"):
        runplan.checked(RunConfig(variant="percpu", vcpus=1, domain_vcpus=4096, entries=256))


def test_idle_vcpus_are_state_only():
    """The domain's state (pte, vst) has a row for every domain vCPU; what belongs to a running
    process (stats, live, expect, frame counter lines) only for the active ones."""
    cfg = config.validate(RunConfig(variant="lockless", vcpus=2, domain_vcpus=32))
    f = _shapes(cfg)
    assert f["pte"] == (32 * cfg.entries,) and f["vst"][0] == 32
    assert f["stats"][0] == f["live"][0] == f["expect"][0] == 2
    assert config.params(cfg)[abi.P_FRAME_WORDS] == abi.frame_words(2)


def _flushes(domain_vcpus: int, n: int = 4000) -> tuple[int, int]:
    cfg = config.validate(RunConfig(variant="locked", vcpus=1, domain_vcpus=domain_vcpus, seed=3,
                                    cost_flush_one=0, cost_flush_all=0, cost_walk=0, cost_refill=0))
    p = config.params(cfg)
    p[abi.P_CHUNK_CYCLES] = 1 << 62
    views, _, args = harness.private_state(cfg, p)
    assert loops.run_ops(n, 0, *args) == abi.ST_OK
    s = views["stats"][0]
    assert oracle.variant_checks(views, cfg) == {"slot_leaks": 0, "invariant_violations": 0}
    return int(s[abi.S_FLUSH_ALL]), int(s[abi.S_MAPS])


def test_one_active_vcpu_in_a_32_vcpu_domain_flushes_tenfold_less():
    """locked's pool is the domain's: one active vCPU in a 32-vCPU domain has 512 slots and wraps
    (and flushes) about every 500 maps, not every 8 as in a one-vCPU domain. Mutation tried
    (``domain_vcpus`` patched to ``cfg.vcpus`` in locked and config: state_shape and P_SLOTS sized
    by the active vCPUs again): the two flush counts are equal, fails."""
    alone, maps1 = _flushes(1)
    in_domain, maps32 = _flushes(32)
    assert maps1 == maps32
    assert in_domain * 10 <= alone, (alone, in_domain)


def test_idle_vcpus_rows_are_checked():
    """An idle vCPU's row must stay empty: a slot marked in use there is a leak the variant's
    check() finds. Mutation tried (``domain_vcpus`` patched to ``cfg.vcpus`` in lockless, so
    that check() loops over the active vCPUs only): the dirty idle row passes, fails."""
    cfg = config.validate(RunConfig(variant="lockless", vcpus=1, domain_vcpus=4))
    views, _, _ = harness.private_state(cfg, config.params(cfg))
    assert oracle.variant_checks(views, cfg)["slot_leaks"] == 0
    iu = lockless._offsets(cfg.hash_entries, cfg.entries)[3]
    views["vst"][3, iu] |= 1 << 5
    assert oracle.variant_checks(views, cfg)["slot_leaks"] == 1


def test_compare_columns_are_one_domain():
    """compare's two columns: 1 active vCPU and every allowed core active, in one 32-vCPU domain
    by default (the seed's guest), or --domain-vcpus; both say D and A."""
    from testbed import experiments

    cols = experiments.compare_columns(RunConfig(), 2)
    assert [(c["active_vcpus"], c["domain_vcpus"]) for c in cols.values()] == [(1, 32), (2, 32)]
    assert cols["single"]["sched"] == "dedicated"
    cols = experiments.compare_columns(RunConfig(domain_vcpus=8), 2)
    assert cols["multi"]["domain_vcpus"] == 8
    assert experiments.compare_columns(RunConfig(), 40)["multi"]["domain_vcpus"] == 40


# --- timers ---------------------------------------------------------------------------------------


def _freebsd_etime_before_panic() -> int:
    """FreeBSD 10.4 xentimer_et_start's retry loop, every try answered -ETIME: how many tries
    it makes before it panics. ``do { if (++i == 60) panic(...); ...; error = start_timer(...);
    } while (error == -ETIME);`` with ``i = 0``."""
    i = tries = 0
    while True:
        i += 1
        if i == 60:
            return tries
        tries += 1


def _arm(p, srow, late: bool):
    deadline = 0 if late else (1 << 62)
    kernels.arm_timer(p, srow, deadline)


def test_panic_streak_counts_as_freebsd_does():
    """The default panic streak is FreeBSD's: the kernel panics on the -ETIME after which FreeBSD's
    loop panics (59, not 60). Mutation tried (the config's panic streak patched to 60): fails."""
    cfg = config.validate(RunConfig(workload="timers", vcpus=1))
    assert cfg.slack_us == 100.0          # et_min_period: XENTIMER_MIN_PERIOD_IN_NSEC, 100 us
    p = config.params(cfg)
    srow = np.zeros(abi.N_STATS, dtype=np.int64)
    need = _freebsd_etime_before_panic()
    for k in range(need):
        assert srow[abi.S_PANICS] == 0, f"panicked after {k} -ETIME"
        _arm(p, srow, late=True)
    assert srow[abi.S_PANICS] == 1 and srow[abi.S_ETIME] == need == 59
    assert srow[abi.S_STREAK_MAX] == 59


def test_sshot_future_ignored_gives_no_etime():
    """Xen 4.18+ (--sshot-future ignored) arms a late timer with no -ETIME: no streak, no panic,
    the late timers still counted. Mutation tried (``P_SSHOT_FUTURE`` forced to 1 in params, as
    if arm_timer ignored it): fails."""
    for mode, etime in (("honoured", 100), ("ignored", 0)):
        cfg = config.validate(RunConfig(workload="timers", vcpus=1, sshot_future=mode))
        p = config.params(cfg)
        srow = np.zeros(abi.N_STATS, dtype=np.int64)
        for _ in range(100):
            _arm(p, srow, late=True)
        _arm(p, srow, late=False)
        assert (srow[abi.S_ETIME], srow[abi.S_TIMER_LATE], srow[abi.S_TIMER_SETS]) == (etime, 100, 101), mode
        assert srow[abi.S_PANICS] == (1 if mode == "honoured" else 0) and srow[abi.S_STREAK] == 0


# --- the TLB clock through its wrap ------------------------------------------------------------------

NEAR_WRAP = (1 << 32) - 5


def _seeded(cfg):
    p = config.params(cfg)
    p[abi.P_CHUNK_CYCLES] = 1 << 62
    views, tlbv, args = harness.private_state(cfg, p)
    views["dom"][tlb.D_TLBCLOCK] = NEAR_WRAP
    return views, tlbv, args


def _locked_cfg():
    return config.validate(RunConfig(variant="locked", vcpus=1, seed=11, entries=16, frames=4096,
                                     cost_flush_one=0, cost_flush_all=0, cost_walk=0, cost_refill=0))


def test_tlb_clock_wraps_as_the_model_does():
    """Seeded just below 2**32, the compiled clock goes through the wrap as the model does: to 0
    for the flush that wraps it (a CPU stamp of 0), then restarted at 1. locked driven one map /
    unmap at a time from Python, clock, this CPU's stamp and the domain's stamp compared after
    each step. Mutation tried: in tlb.pre_flush, dropping ``cas(dom, D_TLBCLOCK, 0, 1)`` (no reset
    to 1): the clock stays at 0, fails at the first wrap."""
    cfg = _locked_cfg()
    views, tlbv, args = _seeded(cfg)
    model = LockedModel(1, cfg.entries, cfg.hash_entries)
    model.tlbflush_clock = NEAR_WRAP
    w = locked.dom_words(cfg.dom_layout, cfg.lock)
    p, dom, pte, dbits, vst = args[0], views["dom"], views["pte"], views["dbits"], views["vst"]
    rng = np.random.default_rng(5)
    wrapped = False
    for step in range(400):
        mfn = int(rng.integers(0, cfg.frames))
        va = int(kernels.map_page(0, mfn, p, dom, pte, dbits, vst[0], views["stats"][0], tlbv))
        assert va - abi.MAPCACHE_VA == model.map(0, mfn), step
        kernels.unmap_page(0, va, p, dom, pte, dbits, vst[0], views["stats"][0], tlbv)
        model.unmap(0, va - abi.MAPCACHE_VA)
        got = (int(dom[tlb.D_TLBCLOCK]), int(vst[0, abi.V_TLBFLUSH_TIME]), int(dom[w["tlbflush_ts"]]))
        assert got == (model.tlbflush_clock, model.tlbflush_time[0], model.tlbflush_timestamp), step
        wrapped |= got[0] < NEAR_WRAP
    assert wrapped and 1 <= int(dom[tlb.D_TLBCLOCK]) < 1000


@pytest.mark.skipif(native.compiler() is None, reason="no C compiler: the C port cannot be built")
def test_tlb_clock_wraps_alike_in_numba_and_c():
    """The compiled loop and the C port, both from a clock seeded just below 2**32, end with the
    same state word for word, past the wrap. Mutation tried: dropping the reset to 1 in
    tlb.pre_flush: the clock words differ (numba 0, C small), fails."""
    cfg = _locked_cfg()
    a, b = _seeded(cfg), _seeded(cfg)
    nat = native.Native(native.compiler())
    try:
        assert loops.run_ops(2000, 0, *a[2]) == nat.bind(*b[2])(2000, 0) == abi.ST_OK
    finally:
        nat.close()
    for name in ("dom", "vst", "pte", "dbits"):
        assert np.array_equal(a[0][name], b[0][name]), name
    clock = int(a[0]["dom"][tlb.D_TLBCLOCK])
    assert 1 <= clock < NEAR_WRAP, clock                  # went through the wrap and restarted


# --- every check the verdict counts, through its real input -----------------------------------------


def _state(variant="lockless"):
    cfg = config.validate(RunConfig(variant=variant, vcpus=1, seed=2, frames=64))
    views, _, args = harness.private_state(cfg, config.params(cfg))
    return cfg, views


def _verdict(cfg, views, failure=None, extra=None):
    """The verdict a run would get from this state: the harness's own path (lost writes, the
    variant's check(), the stats row, the failure) through results.build."""
    lost, written, counted = oracle.lost_writes(views, cfg)
    vchecks = oracle.variant_checks(views, cfg)
    res = results.build(cfg=cfg, cores=[0], stats=views["stats"][:1].copy(), hist=views["hist"][:1].copy(),
                        samples=[], window=(0.0, 1.0), ops_at=((0,), (0,)), lost_writes=lost,
                        writes_reported=written, writes_counted=counted, variant_checks=vchecks, failure=failure,
                        interrupted=None, startup={}, exitcodes=[0], complete=True, extra=extra)
    return res["verdict"], res["checks"]


def _leak(cfg, views):
    iu = lockless._offsets(cfg.hash_entries, cfg.entries)[3]
    views["vst"][0, iu] |= 1 << 3              # in use, yet no mapping or bucket explains it
    return {}


def _lost(cfg, views):
    views["expect"][0, 7] += 1                 # a write the vCPU made that frame 7 never counted
    views["stats"][0, abi.S_WRITES] += 1
    return {}


def _counter(col):
    def feed(cfg, views):
        views["stats"][0, col] += 1
        return {}
    return feed


def _bad_refcount(cfg, views):
    rc = lockless._offsets(cfg.hash_entries, cfg.entries)[2]
    views["vst"][0, rc + 2] = 1                # a refcount on a slot nobody holds
    return {}


FEEDS = {
    "stale_translations": _counter(abi.S_STALE),
    "held_stale_translations": _counter(abi.S_HELD_STALE),
    "reused_held_slots": _counter(abi.S_HELD_PTE),
    "lost_writes": _lost,
    "slot_leaks": _leak,
    "refcount_errors": _counter(abi.S_REFCNT_ERR),
    "exhaustion": _counter(abi.S_EXHAUSTED),
    "invariant_violations": _bad_refcount,
    "periodic_violations": lambda cfg, views: {"extra": {"stress": {"periodic_violations": 1}}},
    "worker_failures": lambda cfg, views: {"failure": {"kind": "hung", "vcpu": 0, "message": "hung"}},
    "sched_violations": _counter(abi.S_BAD_SWITCH),
    "xen_assertions": _counter(abi.S_XEN_BUGS),       # what csrc/xen/shim.h counts for a failed ASSERT
}


def test_every_check_has_a_feed():
    assert set(FEEDS) == set(oracle.CHECK_KEYS)


def test_clean_state_succeeds():
    cfg, views = _state()
    verdict, checks = _verdict(cfg, views)
    assert verdict == "SUCCESS" and checks["violations"] == 0


@pytest.mark.parametrize("check", oracle.CHECK_KEYS)
def test_each_check_fails_the_verdict_through_its_input(check):
    """Each check the verdict counts, fed through the input a run gives it (the variant's check()
    on a state with a leaked slot or a bad refcount, the frames' write counts, a counter in the
    stats row, a failure, the stress block), turns the verdict to FAILURE and counts under its own
    name. Mutation tried (patched): ``"slot_leaks"`` dropped from oracle.CHECK_KEYS, so that the
    verdict ignores leaks: the slot_leaks case fails."""
    cfg, views = _state()
    kw = FEEDS[check](cfg, views)
    verdict, checks = _verdict(cfg, views, **kw)
    assert checks[check] >= 1, checks
    assert verdict == "FAILURE", checks
    others = {k: v for k, v in checks.items() if k not in (check, "violations") and v}
    assert not others, f"{check}'s input also counted as {others}"


# --- the run queue: FIFO against credit2's order -----------------------------------------------------


def _fifo_order(n: int, cpus: int, slices: int) -> list[int]:
    """The vCPUs given a pCPU, slice after slice, by workers/sched.py's FIFO queue: the first
    ``cpus`` run, the others queue; a vCPU whose slice is up queues at the tail."""
    from collections import deque

    queue, running, out = deque(range(cpus, n)), list(range(cpus)), []
    for _ in range(slices):
        for c in range(cpus):
            if queue:
                queue.append(running[c])
                running[c] = queue.popleft()
            out.append(running[c])
    return out


def _credit2_order(n: int, cpus: int, slices: int, slice_credit: int = 1000) -> list[int]:
    """credit2's choice (xen/common/sched/credit2.c: runq_candidate takes the runnable vCPU of most
    credit, burn_credits charges the time run, reset_credit adds CSCHED2_CREDIT_INIT to all when
    the best goes negative), for equal-weight vCPUs that never block, as the testbed's active
    vCPUs are; ties go to the one queued first (the runq is kept sorted, stable)."""
    init = 10 * slice_credit
    credit = [init] * n
    queued = list(range(cpus, n))              # in arrival order
    running, out = list(range(cpus)), []
    for _ in range(slices):
        for c in range(cpus):
            credit[running[c]] -= slice_credit
            if queued:
                best = max(queued, key=lambda v: (credit[v], -queued.index(v)))
                if credit[best] >= credit[running[c]]:
                    queued.remove(best)
                    queued.append(running[c])
                    running[c] = best
            if max(credit) < 0:
                credit = [x + init for x in credit]
            out.append(running[c])
    return out


@pytest.mark.parametrize("n,cpus", [(4, 2), (16, 2), (5, 1), (64, 2)])
def test_fifo_run_queue_gives_credit2s_order(n, cpus):
    """For equal-weight vCPUs that never block (every active vCPU of the testbed: a vCPU only
    leaves its pCPU when its slice is up, idle vCPUs never wake), credit2's order by credit is the
    FIFO queue's round robin, so keeping FIFO changes no figure. Mutation tried: credit2 taking the
    least credit (``min``): the orders differ, fails."""
    assert _credit2_order(n, cpus, 8 * n) == _fifo_order(n, cpus, 8 * n)
