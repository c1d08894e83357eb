"""The variants through the real harness: real ones pass, broken ones are caught.

Every test over designs is parametrised by the registry; a design is a unit of
three files and a registry line (docs/variants.md), and
``test_every_registered_design_has_all_its_parts`` fails when a registered design
lacks one of them.
"""

import types

import pytest

from testbed import abi, kernels, loops, native
from testbed import variants as registry
from testbed.config import RunConfig
from testbed.harness import run

try:
    import designs
except ImportError:  # tests/ made a package
    from tests import designs

REAL = tuple(v.name for v in registry.REAL)
CONTROLS = tuple(v.name for v in registry.CONTROLS)
XEN = ("xen",)          # a Xen tree's own code: tests/test_xen.py
LOCKS = ("ticket", "mcs", "tas")


def test_every_registered_variant_is_covered_here():
    from testbed.variants import contract

    assert set(registry.VARIANTS) == set(REAL) | set(CONTROLS) | set(XEN)
    assert set(REAL) >= {"directmap", "locked", "lockless", "percpu", "kmap-local"} and len(CONTROLS) >= 11
    for v in registry.VARIANTS.values():
        native_ = v.module.NATIVE          # runs its C loop: no compiled map_page / unmap_page
        for hook in contract.REQUIRED + tuple(contract.OPTIONAL):
            assert hasattr(v.module, hook) or (native_ and hook in contract.COMPILED), f"{v.name} lacks {hook}"
    assert [v.name for v in registry.VARIANTS.values() if v.module.NATIVE] == list(XEN)
    assert registry.XEN not in registry.REAL + registry.CONTROLS and registry.XEN.kind == "xen"
    vids = [v.vid for v in registry.REAL]
    assert vids == list(range(len(registry.MODULES))), "ids are the registry order, one per module"
    assert all(v.control and v.catches for v in registry.CONTROLS)
    assert all(v.fault or v.options for v in registry.CONTROLS), \
        "a control without a fault bit or options that break it is its real variant"
    from testbed.oracle import CHECK_KEYS

    assert all(set(v.catches) <= set(CHECK_KEYS) for v in registry.CONTROLS), "a control names the checks that exist"
    assert not any(v.control for v in registry.REAL)
    assert [v.name for v in registry.REAL if v.baseline] == [registry.BASELINE]
    assert registry.get("locked").locks == LOCKS


def missing_parts(modules) -> list[str]:
    """What a design unit lacks, for each module: its C file, its test file, what that file must hold.

    The module itself is there (the registry imported it and the contract checked it); a native
    kind (xen) has its C elsewhere, in the user's tree, and no model of its own."""
    out = []
    for m in modules:
        if m.NATIVE:
            continue
        if not native.c_file(m).is_file():
            out.append(f"{m.NAME}: no C map and unmap ({native.c_file(m)})")
        if designs.missing([m]):
            out.append(f"{m.NAME}: no reference model and adapter ({designs.path_of(m)})")
            continue
        try:
            designs.adapter(m)
        except designs.AdapterError as e:
            out.append(f"{m.NAME}: {e}")
    return out


def test_every_registered_design_has_all_its_parts():
    """Its numba module (the registry imports it), its C file and its tests/designs file."""
    modules = list(registry.MODULES) + [registry.XEN.module]
    assert missing_parts(modules) == []
    for m in registry.MODULES:      # the C port includes each design's file, and it names the design's functions
        text = native.c_file(m).read_text()
        name = native.module_name(m)
        assert f"{name}_map(" in text and f"{name}_unmap(" in text, native.c_file(m)
        assert f'#include "variants/{name}.h"' in native.designs_header()


def test_a_design_without_its_parts_is_named(tmp_path, monkeypatch):
    """The negative control: a module registered with no C file and no test file, then a test file
    that lacks the model. Mutation: make missing_parts skip the C file and this fails."""
    m = types.ModuleType("testbed.variants.halfway")
    m.NAME, m.NATIVE = "halfway", False
    got = missing_parts([m])
    assert len(got) == 2 and "no C map and unmap" in got[0] and "no reference model" in got[1], got
    import sys

    monkeypatch.setattr(designs, "HERE", tmp_path)
    (tmp_path / "halfway.py").write_text("PER_VCPU = True\n")
    half = types.ModuleType(f"{designs.__name__}.halfway")
    half.PER_VCPU = True
    monkeypatch.setitem(sys.modules, half.__name__, half)     # what importing that file gives
    got = missing_parts([m])
    assert any("lacks Model" in x for x in got), got


def _run(variant, seed, **kw):
    cfg = dict(variant=variant, vcpus=2, duration=0.6, warmup=0.0, seed=seed, frames=256)
    cfg.update(kw)
    return run(RunConfig(**cfg))


@pytest.mark.parametrize("workload", ["uniform", "hot", "ptwalk", "nest-same", "guest", "timers"])
@pytest.mark.parametrize("variant", REAL)
def test_real_variants_pass_every_check(variant, workload, exclusive, no_leftovers):
    seed = 11
    # what a design needs to run a workload at all (its tests/designs file's RUN_OPTIONS)
    extra = designs.adapter(registry.get(variant).module).RUN_OPTIONS.get(workload, {})
    res = _run(variant, seed, workload=workload, **extra)
    assert res["verdict"] == "SUCCESS", f"seed {seed}: {res['checks']} {res['failure']}"
    assert all(v == 0 for v in res["checks"].values()), f"seed {seed}: {res['checks']}"
    t = res["totals"]
    assert t["ops"] > 0 and t["maps"] > 0
    for key in ("maps", "hash_hits", "tlb_hits", "tlb_misses", "tlb_flush_one", "tlb_flush_all",
                "lock_acquisitions", "lock_contended", "lock_spin_cycles"):
        assert key in t
    designs.adapter(registry.get(variant).module).check_run(t)
    if not registry.get(variant).locks:
        assert res["lock"] is None
    if not registry.get(variant).baseline:
        assert t["tlb_hits"] + t["tlb_misses"] == t["writes"]      # the oracle's rechecks leave the TLB alone
        # every mapcache mapping was checked again before its unmap: one recheck per map
        assert t["held_rechecks"] == t["maps"] > 0


@pytest.mark.parametrize("control", CONTROLS)
def test_negative_controls_are_caught(control, exclusive, no_leftovers):
    v = registry.get(control)
    for seed in (1, 2, 3):
        res = _run(control, seed, duration=1.5, **dict(v.options))
        caught = {k: res["checks"][k] for k in v.catches if res["checks"][k] > 0}
        if res["verdict"] == "FAILURE" and caught:
            return
    pytest.fail(f"{control} was not caught with seeds 1..3: last checks {res['checks']}, failure {res['failure']}")


def test_lockless_with_16_entries_exhausts_on_a_nested_walk(exclusive, no_leftovers):
    seed = 4
    res = _run("lockless", seed, workload="ptwalk", entries=16, unchecked=True, vcpus=1, duration=2.0)
    assert res["verdict"] == "FAILURE", f"seed {seed}"
    assert res["checks"]["exhaustion"] >= 1, f"seed {seed}: {res['checks']}"
    f = res["failure"]
    assert f["kind"] == "exhaustion" and f["vcpu"] == 0
    assert "MAPCACHE_VCPU_ENTRIES 16" in f["message"]
    # 16 slots, 8 held by the hash: the walk ran out after at least 8 live mappings
    assert len(f["live"]) >= 8


def test_lockless_with_32_entries_holds_the_nested_walk(exclusive, no_leftovers):
    seed = 4
    res = _run("lockless", seed, workload="ptwalk", vcpus=1, duration=1.0)
    assert res["verdict"] == "SUCCESS", f"seed {seed}: {res['checks']} {res['failure']}"


def test_256_nested_maps_of_one_mfn_wrap_the_lockless_refcount(exclusive, no_leftovers):
    seed = 5
    res = _run("lockless", seed, workload="ptwalk", nest=256, working_set=1, vcpus=1, duration=2.0)
    assert res["checks"]["refcount_errors"] >= 1, f"seed {seed}: {res['checks']}"
    assert res["failure"]["kind"] == "refcount_error"
    assert len(res["failure"]["live"]) == 255


def _fresh(name, vcpus=1):
    from testbed import config, harness, tlb

    cfg = config.validate(RunConfig(variant=name, vcpus=vcpus, frames=16))
    p = config.params(cfg)
    lay = harness.build_layout(cfg)
    views = lay.views(bytearray(lay.size))
    harness.init_state(views, cfg)
    return cfg, p, views, tlb.make_tlb(16, 4)


def _op_args(p, views, t, v=0):
    return (p, views["dom"], views["pte"], views["dbits"], views["vst"][v], views["stats"][v], t)


@pytest.mark.parametrize("name", REAL)
def test_dispatch_reaches_each_variants_own_map_page(name):
    """Through the dispatch and straight through the module: the same address and the same state.

    Mutation: swap two ``import ... as v1`` / ``as v2`` lines in dispatch.source and this fails.
    """
    import numpy as np

    v = registry.get(name)
    _, p, a, ta = _fresh(name)
    _, _, b, tb = _fresh(name)
    assert p[abi.P_VARIANT] == v.vid
    for mfn in (3, 11, 3, 5):
        via_dispatch = kernels.map_page(0, mfn, *_op_args(p, a, ta))
        direct = v.module.map_page(0, mfn, *_op_args(p, b, tb))
        assert via_dispatch == direct and via_dispatch > 0, (name, mfn, via_dispatch, direct)
        for key in ("dom", "pte", "dbits", "vst", "stats"):
            assert np.array_equal(a[key], b[key]), (name, mfn, key)
    st = kernels.unmap_page(0, via_dispatch, *_op_args(p, a, ta))
    assert st == v.module.unmap_page(0, direct, *_op_args(p, b, tb)) == abi.ST_OK
    assert np.array_equal(a["vst"], b["vst"]) and np.array_equal(a["pte"], b["pte"])


def test_an_unknown_variant_id_runs_nothing():
    """Mutation: make the generated chain end in a call of the last variant and this fails."""
    import numpy as np

    from testbed import harness

    _, p, views, t = _fresh("directmap")
    p[abi.P_VARIANT] = len(registry.MODULES)
    before = {k: views[k].copy() for k in ("dom", "pte", "dbits", "vst")}
    assert kernels.map_page(0, 3, *_op_args(p, views, t)) == -abi.ST_BAD_VARIANT
    assert kernels.unmap_page(0, abi.MAPCACHE_VA, *_op_args(p, views, t)) == abi.ST_BAD_VARIANT
    assert all(np.array_equal(views[k], before[k]) for k in before)
    st = loops.run_ops(4, 0, *abi.kernel_args(views, p, t, kernels.seed_state(1, 0)))
    assert st == abi.ST_BAD_VARIANT and abi.STATUS_NAMES[st] == "bad_variant"


PROBE = """
from testbed.jit import inline_kernel


@inline_kernel
def map_page(vcpu, mfn, p, dom, pte, dbits, vrow, srow, tlbv):
    return {k} * 1000 + mfn


@inline_kernel
def unmap_page(vcpu, va, p, dom, pte, dbits, vrow, srow, tlbv):
    return {k} * 1000 + 7
"""


def test_generated_dispatch_routes_each_id_to_its_module(tmp_path, monkeypatch):
    """The generator on probe modules that say who they are: id k reaches module k, others nothing."""
    import sys

    from testbed.variants import dispatch

    names = []
    for k in range(1, 5):
        (tmp_path / f"dispatch_probe_{k}.py").write_text(PROBE.format(k=k))
        names.append(f"dispatch_probe_{k}")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        gen = dispatch.load(names)
        _, p, views, t = _fresh("directmap")
        for vid in range(len(names)):
            p[abi.P_VARIANT] = vid
            assert gen.map_page(0, 5, *_op_args(p, views, t)) == (vid + 1) * 1000 + 5
            assert gen.unmap_page(0, 5, *_op_args(p, views, t)) == (vid + 1) * 1000 + 7
        for vid in (-1, len(names), 1 << 40):
            p[abi.P_VARIANT] = vid
            assert gen.map_page(0, 5, *_op_args(p, views, t)) == -abi.ST_BAD_VARIANT
            assert gen.unmap_page(0, 5, *_op_args(p, views, t)) == abi.ST_BAD_VARIANT
    finally:
        for n in names:
            sys.modules.pop(n, None)


@pytest.mark.parametrize("lock", LOCKS)
def test_every_lock_passes_and_reports_handoff_and_fairness(lock, exclusive, no_leftovers):
    seed = 7
    res = _run("locked", seed, lock=lock, duration=1.0)
    assert res["verdict"] == "SUCCESS", f"seed {seed} lock {lock}: {res['checks']} {res['failure']}"
    assert res["config"]["lock"] == lock
    lk = res["lock"]
    assert lk["kind"] == lock and lk["acquisitions"] == res["totals"]["lock_acquisitions"] > 0
    assert lk["acquisitions_per_vcpu"] == [d["lock_acquisitions"] for d in res["per_vcpu"]]
    assert 0.5 <= lk["jain_fairness"] <= 1.0
    assert lk["handoffs"] <= res["totals"]["lock_contended"] + lk["acquisitions"]
    if lk["handoffs"]:
        assert lk["handoff_mean_cycles"] > 0
    if lock in ("ticket", "mcs"):     # queue locks: a releaser never overtakes a waiter
        assert lk["reacquired"] == 0, lk


def test_locked_pool_runs_out_when_every_vcpu_walks_deep(exclusive, no_leftovers):
    """A finding, kept as a test: with MAPCACHE_VCPU_ENTRIES = 16 = levels**2, the
    domain pool of the old design holds 16 slots per vCPU, but idle hash entries
    also pin slots and only their own vCPU may evict them. When every vCPU nests
    16 deep at once, a vCPU can find the pool full of other vCPUs' cached slots:
    Xen's BUG_ON. The seed's per-vCPU design does not share the pool at all."""
    for seed in (1, 2, 3):
        res = _run("locked", seed, workload="ptwalk", duration=3.0)
        if res["checks"]["exhaustion"]:
            assert res["failure"]["kind"] == "exhaustion"
            return
    pytest.fail(f"no exhaustion with seeds 1..3: {res['checks']}")
