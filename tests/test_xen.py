"""A Xen tree's own domain_page.c under the testbed (testbed/xen.py, testbed/variants/xen.py).

The inputs are the Xen files beside the checkout (``../shared/xen``: ``seed-base``, the tree
the seed patch was written against, and ``head``) and the seed patch (``../shared/seed``);
without them every test here is skipped, saying so.

The differential test runs the real code and its transcription (the C port of ``locked`` for
the old design, in seed-base and in head, of ``lockless`` for the seed: tests/test_native.py holds the port to the
numba kernels word for word) from the same seed, one operation at a time, on one vCPU and on
four interleaved in a fixed order in one process, and compares after every operation the
status, the slots returned (the live row), the whole PTE array and the full / one-slot flush
counts, and at the end the whole mapcache state (bitmaps, cursor, epoch, TLB stamp, lock word,
every hash entry and refcount) read out of Xen's structs.
Mutations tried: in lockless_map of csrc/testbed_op.c, free the bucket's old slot at refcount
<= 1 instead of 0 (the seed's differential fails on ptwalk and nest-same, at 1 and 4 vCPUs); in
locked_map_, skip the hash replacement when the harvest finds nothing (the old design's fails
on ptwalk and nest-same at 1 vCPU).
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from testbed import abi, config, harness, kernels, native, runplan, tlb
from testbed.config import RunConfig
from testbed.errors import UsageError

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"


def _shared() -> Path | None:
    """``shared`` beside the checkout (CI: ../shared), or beside the folder of worktrees."""
    for up in (ROOT.parent, ROOT.parent.parent):
        if (up / "shared" / "xen" / "seed-base" / "xen" / "arch" / "x86" / "domain_page.c").is_file():
            return up / "shared"
    return None


SHARED = _shared()
pytestmark = [pytest.mark.skipif(SHARED is None, reason="no ../shared/xen beside the checkout: the Xen trees "
                                 "these tests run are not here"),
              pytest.mark.skipif(native.compiler() is None, reason="no C compiler: the Xen file cannot be built")]
SEED_BASE = str(SHARED / "xen" / "seed-base") if SHARED else ""
HEAD = str(SHARED / "xen" / "head") if SHARED else ""
SEED = str(SHARED / "seed" / "per-vcpu-mapcache-patch.txt") if SHARED else ""

WORKLOADS = tuple(config.WORKLOADS)


def _cfg(variant, vcpus, workload, **kw):
    base = dict(variant=variant, vcpus=vcpus, workload=workload, seed=7, frames=64, duration=1.0,
                slack_us=1e6)      # timers: a deadline never missed, so no -ETIME retry depends on the clock
    base.update(kw)
    return config.validate(RunConfig(**base))


def _state(cfg, runner):
    p = config.params(cfg)
    p[abi.P_CHUNK_CYCLES] = 1 << 62
    views, _, _ = harness.private_state(cfg, p)
    per = []
    for v in range(cfg.vcpus):
        tlbv = tlb.make_tlb(int(p[abi.P_TLB_SETS]), int(p[abi.P_TLB_WAYS]))
        per.append(abi.kernel_args(views, p, tlbv, kernels.seed_state(cfg.seed, v)))
    return views, per


@pytest.fixture(scope="module")
def port():
    n = native.Native()
    yield n
    n.close()


@pytest.mark.parametrize("workload", WORKLOADS)
@pytest.mark.parametrize("vcpus,domain", ((1, None), (4, None), (1, 32)), ids=("1", "4", "1of32"))
@pytest.mark.parametrize("tree,design,patches", (("seed-base", "locked", ()), ("head", "locked", ()),
                                                 ("seed-base", "lockless", ("seed",))), ids=("old", "head", "seed"))
def test_differential(port, tree, design, patches, vcpus, domain, workload):
    """The real old design against ``locked``, the real seed against ``lockless``: the same slots,
    PTEs, flushes, statuses and final state, operation by operation (see the module docstring).
    1of32 is compare's single-core column: one active vCPU in the seed's 32-vCPU domain, whose
    pool Xen sizes for d->max_vcpus; it fails if the tree's domain were set up for the active
    vCPUs only (its pool 16 slots, not 512: flushes 63 times as often)."""
    from testbed.variants import xen as xv

    patches = tuple(SEED if p == "seed" else p for p in patches)
    xcfg = _cfg("xen", vcpus, workload, xen_tree=HEAD if tree == "head" else SEED_BASE, xen_patches=patches,
                domain_vcpus=domain)
    tcfg = _cfg(design, vcpus, workload, entries=xcfg.entries, hash_entries=xcfg.hash_entries, domain_vcpus=domain,
                **({"lock": "ticket", "dom_layout": "xen"} if design == "locked" else {}))
    xviews, xargs = _state(xcfg, None)
    tviews, targs = _state(tcfg, None)
    xnat = xv.runner(xcfg).native
    xrun = [xnat.bind(*a) for a in xargs]
    trun = [port.bind(*a) for a in targs]
    for step in range(400):
        for v in range(vcpus):
            xs, ts = xrun[v](1, v), trun[v](1, v)
            where = f"{workload}, {vcpus} vCPUs, operation {step} of vCPU {v}"
            assert xs == ts, f"status: {where}"
            if ts == abi.ST_EXHAUSTED:          # Xen's BUG_ON after a search that found no slot
                assert xviews["stats"][v, abi.S_XEN_BUG_KIND] == 2 and xviews["stats"][v, abi.S_XEN_BUGS] == 0
                return
            np.testing.assert_array_equal(xviews["live"][v], tviews["live"][v], err_msg=f"slots returned: {where}")
            np.testing.assert_array_equal(xviews["pte"], tviews["pte"], err_msg=f"PTEs: {where}")
            for col in (abi.S_FLUSH_ALL, abi.S_FLUSH_ONE, abi.S_MAPS, abi.S_STALE, abi.S_HELD_PTE):
                assert xviews["stats"][v, col] == tviews["stats"][v, col], f"{abi.COUNTER_NAMES[col]}: {where}"
    kind, _, conv = xv.as_transcription(xviews, xcfg)
    assert kind == design
    np.testing.assert_array_equal(conv["dbits"], tviews["dbits"], err_msg="bitmaps")
    width = conv["vst"].shape[1]          # the transcription's rows are padded to whole cache lines
    np.testing.assert_array_equal(conv["vst"], tviews["vst"][:, :width], err_msg="per-vCPU state: hash, refcounts, epoch")
    from testbed.variants import locked

    xw = locked.dom_words("xen")
    words = [tlb.D_TLBCLOCK] + ([xw[k] for k in ("cursor", "lock", "epoch", "tlbflush_ts")] if design == "locked" else [])
    np.testing.assert_array_equal(conv["dom"][words], tviews["dom"][words], err_msg="domain words")
    assert xviews["stats"][:, abi.S_XEN_MAPS].sum() == xviews["stats"][:, abi.S_MAPS].sum()


def test_geometry_from_the_tree():
    """MAPCACHE_VCPU_ENTRIES comes from the tree's config.h, patched: 16 before the seed, 32 after."""
    assert _cfg("xen", 1, "uniform", xen_tree=SEED_BASE).entries == 16
    assert _cfg("xen", 1, "uniform", xen_tree=SEED_BASE, xen_patches=(SEED,)).entries == 32


def test_seed_patch_skips_domain_c():
    """The seed's hunks for domain.c (not built) are skipped and listed."""
    from testbed import xen

    b = xen.build(SEED_BASE, (SEED,))
    assert [f for _, f in b.skipped] == ["xen/arch/x86/domain.c"]
    assert b.label.endswith("+seed)") and b.record()["patches"][SEED]


def test_bad_inputs(tmp_path):
    """Each is one UsageError naming what is wrong: no tree, a hunk that does not apply, a compile error."""
    from testbed import xen

    with pytest.raises(UsageError, match="not a Xen tree"):
        xen.build(str(tmp_path))
    with pytest.raises(UsageError, match=r"hunk '@@ -\d+.*' of xen/arch/x86/domain_page.c does not apply"):
        xen.build(HEAD, (SEED,))
    with pytest.raises(UsageError, match=r"xen/arch/x86/domain_page.c:\d+:\d+: error"):
        xen.build(SEED_BASE, (str(DATA / "xen-syntax-error.patch"),))


def _run(*args, timeout=240):
    return subprocess.run([sys.executable, "-m", "testbed", "run", "--vcpus", "2", "--duration", "1",
                           "--warmup", "0.3", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def test_cli_bad_input_exits_2():
    res = _run("--variant", "xen", "--xen-tree", "/nonexistent")
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr


SLOW = pytest.mark.skipif(not os.environ.get("TESTBED_SLOW"),
                          reason="a real run of each tree on every workload: TESTBED_SLOW=1 python -m pytest "
                                 "tests/test_xen.py")


def _real_run(variant="xen", **kw):
    cfg = runplan.checked(_cfg(variant, kw.pop("vcpus", 2), kw.pop("workload", "uniform"), duration=0.6, warmup=0.2,
                              frames=4096, slack_us=50.0, **kw))
    return harness.run(cfg)


def _failed(res) -> set:
    return {k for k, n in res["checks"].items() if n and k != "violations"}


# The broken patches of tests/data, each on top of the seed, and the check that must catch it.
BROKEN = {
    # the invlpg on slot reuse left out: a vCPU's TLB still translates the slot's old frame
    "xen-seed-noflush.patch": ("uniform", "stale_translations"),
    # the bucket's old slot freed at refcount 1, while a nested walk still holds it: the next map
    # that takes it trips the file's own ASSERT(vcache->refcnt[idx] == 0) (a debug build)
    "xen-seed-free-held.patch": ("ptwalk", "xen_assertions"),
}


@pytest.mark.parametrize("patch", sorted(BROKEN))
def test_broken_patch_is_caught(patch):
    """Each broken seed ends FAILURE by its check; the unbroken seed, same run, SUCCESS (below).
    Each patch is itself the mutation: with it reverted (the seed alone) the run succeeds."""
    workload, check = BROKEN[patch]
    res = _real_run(xen_tree=SEED_BASE, xen_patches=(SEED, str(DATA / patch)), workload=workload)
    assert res["verdict"] == "FAILURE" and res["checks"][check] > 0, (res["checks"], res["failure"])
    if check == "xen_assertions":
        assert "ASSERT failed at xen/arch/x86/domain_page.c:" in res["failure"]["message"]


def test_seed_runs_the_real_mapcache_path():
    """The seed from Xen's own code: SUCCESS, every map through the mapcache (perfc's count equals
    the maps, none from the directmap), one-slot flushes and no full ones; the result records the
    code it ran."""
    res = _real_run(xen_tree=SEED_BASE, xen_patches=(SEED,))
    t = res["totals"]
    assert res["verdict"] == "SUCCESS", (res["checks"], res["failure"])
    assert t["maps"] > 0 and abs(t["map_domain_page_count"] - t["maps"]) <= 2 and t["xen_directmap_maps"] == 0
    assert t["tlb_flush_one"] > 0 and t["tlb_flush_all"] == 0
    assert res["label"].endswith("+seed)") and res["xen"]["patches"][SEED]
    assert res["xen"]["skipped_hunks"] == [f"{SEED}: xen/arch/x86/domain.c"]


@SLOW
@pytest.mark.parametrize("vcpus", (2, 64))
@pytest.mark.parametrize("workload", WORKLOADS)
@pytest.mark.parametrize("tree", ("seed-base", "seed", "head"))
def test_every_tree_every_workload(tree, workload, vcpus):
    """seed-base and head (the old design) and the seed end as their transcription does, on every
    workload, at 2 vCPUs and at 64 oversubscribed: SUCCESS, or FAILURE by the same checks (the
    old design's 16 slots per vCPU run out under a nested walk, in both)."""
    patches = (SEED,) if tree == "seed" else ()
    path = HEAD if tree == "head" else SEED_BASE
    extra = {"oversubscribe": True} if vcpus > 2 else {}
    res = _real_run(xen_tree=path, xen_patches=patches, workload=workload, vcpus=vcpus, **extra)
    design = "lockless" if tree == "seed" else "locked"
    ref = _real_run(design, workload=workload, vcpus=vcpus, entries=res["config"]["entries"], **extra)
    assert res["verdict"] == ref["verdict"], (res["checks"], res["failure"], ref["checks"])
    assert _failed(res) == _failed(ref), (res["failure"], ref["failure"])
