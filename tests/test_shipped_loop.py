"""The shipped loop against the reference models: ``loops.run_ops``, not its parts.

vCPUs run ``loops.run_ops``, into which numba inlines the variant's map and
unmap, the oracle's access and the TLB; ``test_model.py`` calls ``map_page`` /
``unmap_page`` one at a time, which numba compiles separately. Here the
compiled loop itself runs one operation at a time (``run_ops(1, v, ...)``) on
state private to this process, for 2 vCPUs interleaved in a seeded order, for
every real variant (locked with each of its locks) and every workload.

The operations the loop ran are re-derived from each vCPU's random state by
``tests/model.py``'s ``WorkloadModel`` and replayed, in the same order, in the
design's reference model. After every step the two sides must agree on:

- the design's whole state (PTEs, hash, bitmaps, cursor, epoch, TLB clock words,
  refcounts, stack tops, the lock free) and the counters the model keeps, with
  ``test_model.py``'s state readers;
- what the loop recorded: the vCPU's random state after the step, its ``expect``
  row and its frame counters (MFN by MFN), its ``live`` row (the address and MFN
  of each mapping of the last walk), ops, maps, writes, guest work, no stale
  translation, no live mapping left, and the variant's own ``check``.

Mutation that makes it fail (tried): in ``loops.run_ops``, unmap a walk in map
order (``for k in range(held):``): all 7 ptwalk cases fail (the loop's live count,
and the design state or an unmap-order status). ``test_replay_sees_a_wrong_operation_stream``
keeps a broken workload model (one MFN off) that must be caught at the first step.
Each failure message names the case and the step: ``replay(variant, lock, workload, steps)``.
"""

from __future__ import annotations

import random
import numpy as np
import pytest

from testbed import abi, config, harness, kernels, loops, tlb
from testbed import variants as registry
from testbed.config import RunConfig

try:
    from model import WorkloadModel
    from test_model import MODELS, STATES, _short_diff
except ImportError:  # tests/ made a package
    from tests.model import WorkloadModel
    from tests.test_model import MODELS, STATES, _short_diff

VCPUS = 2
FRAMES = 96
WORKLOADS = tuple(config.WORKLOADS)
CASES = [(v.name, lock) for v in registry.REAL for lock in (v.locks or (None,))]
STEPS = 240


class Shipped:
    """Private state for ``run_ops``: the arena's arrays in a bytearray, a TLB and a random state per vCPU."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.variant = cfg.variant
        self.p = config.params(cfg)
        self.p[abi.P_CHUNK_CYCLES] = 1 << 62        # the step is one operation, never cut by the clock
        layout = harness.build_layout(cfg)
        self.views = layout.views(bytearray(layout.size))
        harness.init_state(self.views, cfg)
        sets, ways = int(self.p[abi.P_TLB_SETS]), int(self.p[abi.P_TLB_WAYS])
        self.tlbs = [tlb.make_tlb(sets, ways) for _ in range(cfg.vcpus)]
        self.rngs = [kernels.seed_state(cfg.seed, v) for v in range(cfg.vcpus)]

    def step(self, v: int) -> int:
        w = self.views
        return int(loops.run_ops(1, v, self.p, w["dom"], w["pte"], w["dbits"], w["vst"], w["frames"],
                                   w["expect"], w["stats"], w["hist"], w["live"], self.tlbs[v], self.rngs[v]))


def make_cfg(variant, lock, workload, seed, recursive=0.0):
    return config.validate(RunConfig(
        variant=variant, lock=lock, vcpus=VCPUS, frames=FRAMES, workload=workload, seed=seed,
        levels=2, hot_set=6, guest_work=7, burst=3, slack_us=1e6, recursive=recursive,
        cost_flush_one=0, cost_flush_all=0, cost_walk=0))


def replay(variant, lock, workload, steps, seed=11, recursive=0.0):
    """Drive ``run_ops`` ``steps`` operations and the model alongside; assert they agree after each."""
    cfg = make_cfg(variant, lock, workload, seed, recursive)
    s = Shipped(cfg)
    mod = registry.get(variant).module
    model = MODELS[mod](cfg.vcpus, cfg.entries, cfg.hash_entries) if mod in MODELS else None
    gens = [WorkloadModel(workload, int(s.rngs[v][0]), working_set=cfg.working_set, hot=cfg.hot_set,
                          nest=cfg.nest, burst=cfg.burst, guest_work=cfg.guest_work, levels=cfg.levels,
                          recursive=int(s.p[abi.P_RECURSIVE]))
            for v in range(cfg.vcpus)]
    expect = np.zeros((cfg.vcpus, cfg.frames), dtype=np.int64)
    live = np.zeros((cfg.vcpus, 2 * config.held_most(cfg)), dtype=np.int64)
    ops = [0] * cfg.vcpus
    maps = [0] * cfg.vcpus
    order = random.Random(seed)
    stats = s.views["stats"]
    for step in range(steps):
        v = order.randrange(cfg.vcpus)
        ctx = f"replay({variant!r}, {lock!r}, {workload!r}, steps={step + 1}, seed={seed}), vcpu {v}"
        streak = int(stats[v, abi.S_STREAK])
        bursts = gens[v].operation(streak)
        st = s.step(v)
        assert st == abi.ST_OK, f"{ctx}: run_ops ended {abi.STATUS_NAMES.get(st, st)}"
        for walk in bursts:
            held = []
            for k, mfn in enumerate(walk):
                va = abi.MAPCACHE_VA + model.map(v, mfn) if model is not None else mfn
                held.append(va)
                live[v, 2 * k], live[v, 2 * k + 1] = va, mfn
                expect[v, mfn] += 1
                maps[v] += 1
            for va in reversed(held):
                if model is not None:
                    model.unmap(v, va - abi.MAPCACHE_VA)
        ops[v] += 1
        # what the loop recorded
        assert int(s.rngs[v][0]) == gens[v].state, f"{ctx}: random state differs: the loop drew other operations"
        row = s.views["expect"][v]
        assert np.array_equal(row, expect[v]), (
            f"{ctx}: expect row differs at MFNs {np.flatnonzero(row != expect[v])[:6].tolist()}")
        col = kernels.counter_col(v)
        assert np.array_equal(s.views["frames"][:, col], expect[v]), f"{ctx}: frame counters differ from the writes"
        assert np.array_equal(s.views["live"][v], live[v]), (
            f"{ctx}: live row {s.views['live'][v].tolist()} != {live[v].tolist()}")
        got = {k: int(stats[v, c]) for k, c in (("ops", abi.S_OPS), ("maps", abi.S_MAPS), ("writes", abi.S_WRITES),
                                                ("work", abi.S_WORK), ("stale", abi.S_STALE), ("live", abi.S_LIVE),
                                                ("invariant", abi.S_INVARIANT))}
        want = {"ops": ops[v], "maps": maps[v], "writes": maps[v], "work": gens[v].work_done, "stale": 0, "live": 0,
                "invariant": 0}
        assert got == want, f"{ctx}: counters {got} != {want}"
        # the design's state
        if model is not None:
            of_model, of_compiled = STATES[type(model)]
            exp, have = of_model(model), of_compiled(s)
            diffs = [f"  {k}: {_short_diff(exp[k], have[k])}" for k in exp if exp[k] != have[k]]
            assert not diffs, f"{ctx}: model and shipped loop differ:\n" + "\n".join(diffs)
        bad = {k: n for k, n in mod.check(s.views, cfg, {}).items() if n}
        assert not bad, f"{ctx}: the variant's check found {bad}"
    return model


@pytest.mark.parametrize("workload", WORKLOADS)
@pytest.mark.parametrize("variant,lock", CASES, ids=[f"{v}:{lk}" if lk else v for v, lk in CASES])
def test_shipped_loop_matches_model(variant, lock, workload):
    replay(variant, lock, workload, STEPS)


@pytest.mark.parametrize("variant,lock", [c for c in CASES if c[0] != "lockless"],
                         ids=[f"{v}:{lk}" if lk else v for v, lk in CASES if v != "lockless"])
def test_recursive_walks_match_the_model(variant, lock):
    """ptwalk with --recursive: the walks the loop drew (an earlier level's table mapped again) are the
    workload model's, and every design but the seed's keeps its model's state and passes its check
    (lockless leaks there: tests/test_cost_model.py). Mutation tried: in kernels.ops_loop, the level
    above (``lrow[2 * (k - 1) + 1]``) in place of a drawn earlier level (``lrow[2 * draw(rng, k) + 1]``):
    all 6 cases fail (the loop's random state and walks are no longer the model's)."""
    replay(variant, lock, "ptwalk", STEPS, recursive=0.5)


def test_every_real_variant_and_workload_is_replayed():
    """The cases cover every registered real design, each of its locks, and every workload."""
    names = {v for v, _ in CASES}
    assert names == {v.name for v in registry.REAL}
    assert {lk for _, lk in CASES if lk} == set(registry.get("locked").locks)
    assert set(WORKLOADS) == set(config.WORKLOADS)
    # a design without a reference model would be compared on the loop's records only
    assert all(registry.get(v).module in MODELS for v in names if v != registry.BASELINE)


def test_replay_sees_a_wrong_operation_stream():
    """The comparison can fail: a workload model that draws one MFN off is caught at the first step."""
    class OffByOne(WorkloadModel):
        def draw_mfn(self):
            return (super().draw_mfn() + 1) % self.working_set

    import sys
    mod = sys.modules[__name__]
    saved = mod.WorkloadModel
    mod.WorkloadModel = OffByOne
    try:
        with pytest.raises(AssertionError, match="steps=1,"):
            replay("lockless", None, "uniform", 5)
    finally:
        mod.WorkloadModel = saved
