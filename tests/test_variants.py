"""The variants through the real harness: real ones pass, broken ones are caught.

Every registered variant must be listed here (style.md, 1: the contract is
tested); a variant added to the registry without a row here fails the suite.
"""

import pytest

from testbed import abi, kernels
from testbed import variants as registry
from testbed.config import RunConfig
from testbed.harness import run

REAL = ("directmap", "locked", "lockless")
CONTROLS = ("locked-nolock", "locked-noflush", "lockless-noflush")
HOOKS = ("NAME", "VID", "DESCRIPTION", "DEFAULT_ENTRIES", "MAX_ENTRIES", "state_shape", "init_state",
         "map_page", "unmap_page", "check")


def test_every_registered_variant_is_covered_here():
    assert set(registry.VARIANTS) == set(REAL) | set(CONTROLS)
    for v in registry.VARIANTS.values():
        for hook in HOOKS:
            assert hasattr(v.module, hook), f"{v.name} lacks {hook}"
    vids = [v.module.VID for v in registry.REAL]
    assert len(set(vids)) == len(vids)
    assert all(v.control and v.catches for v in registry.CONTROLS)
    assert not any(v.control for v in registry.REAL)


def _run(variant, seed, **kw):
    cfg = dict(variant=variant, vcpus=2, duration=0.6, warmup=0.0, seed=seed, frames=256)
    cfg.update(kw)
    return run(RunConfig(**cfg))


@pytest.mark.parametrize("workload", ["uniform", "hot", "ptwalk", "guest"])
@pytest.mark.parametrize("variant", REAL)
def test_real_variants_pass_every_check(variant, workload, exclusive, no_leftovers):
    seed = 11
    # The old design's pool holds one walk per vCPU only if other vCPUs' idle hash
    # entries leave room: see test_locked_pool_runs_out_when_every_vcpu_walks_deep.
    extra = {"nest": 8} if (variant, workload) == ("locked", "ptwalk") else {}
    res = _run(variant, seed, workload=workload, **extra)
    assert res["verdict"] == "SUCCESS", f"seed {seed}: {res['checks']} {res['failure']}"
    assert all(v == 0 for v in res["checks"].values()), f"seed {seed}: {res['checks']}"
    t = res["totals"]
    assert t["ops"] > 0 and t["maps"] > 0
    for key in ("maps", "hash_hits", "tlb_hits", "tlb_misses", "tlb_flush_one", "tlb_flush_all",
                "lock_acquisitions", "lock_contended", "lock_spin_cycles"):
        assert key in t
    if variant == "locked":
        assert t["lock_acquisitions"] > 0 and t["tlb_flush_all"] > 0
    if variant == "lockless":
        assert t["lock_acquisitions"] == 0 and t["tlb_flush_one"] > 0
    if variant != "directmap":
        assert t["tlb_hits"] + t["tlb_misses"] == t["writes"]


@pytest.mark.parametrize("control", CONTROLS)
def test_negative_controls_are_caught(control, exclusive, no_leftovers):
    v = registry.get(control)
    for seed in (1, 2, 3):
        res = _run(control, seed, duration=1.5)
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


def test_dispatch_reaches_each_variant():
    import numpy as np

    from testbed import config, harness, tlb

    for name in REAL:
        cfg = config.validate(RunConfig(variant=name, vcpus=1, frames=16))
        p = config.params(cfg)
        lay = harness.build_layout(cfg)
        views = lay.views(bytearray(lay.size))
        harness.init_state(views, cfg)
        t = tlb.make_tlb(16, 4)
        va = kernels.map_page(0, 3, p, views["dom"], views["pte"], views["dbits"], views["vst"][0],
                              views["stats"][0], t)
        if name == "directmap":
            assert va == 3
        else:
            assert va >= abi.MAPCACHE_VA
            assert views["pte"][va - abi.MAPCACHE_VA] & tlb.PTE_MFN_MASK == 3 or name == "locked"
        st = kernels.unmap_page(0, va, p, views["dom"], views["pte"], views["dbits"], views["vst"][0],
                                views["stats"][0], t)
        assert st == abi.ST_OK
        assert np.all(views["stats"][0, abi.S_REFCNT_ERR] == 0)


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
