"""The cost model's parameters: --cost-refill charged where it should be, bad costs refused.

``--cost-refill N``: after a full flush the next N guest accesses each pay a walk.
Mutation tried: in ``tlb.flush_all``, not setting ``S_REFILL_LEFT``: no refill is ever
charged and the refill counts below fail (and the C port's counters differ).
"""

from __future__ import annotations

import pytest

from testbed import abi, config, harness, kernels, tlb
from testbed.config import RunConfig

from conftest import testbed_cli


def _state(variant, refill, vcpus=1):
    cfg = config.validate(RunConfig(variant=variant, vcpus=vcpus, frames=256, seed=3, cost_flush_one=0,
                                    cost_flush_all=0, cost_walk=0, cost_refill=refill))
    p = config.params(cfg)
    p[abi.P_CHUNK_CYCLES] = 1 << 62
    layout = harness.build_layout(cfg)
    views = layout.views(bytearray(layout.size))
    harness.init_state(views, cfg)
    t = tlb.make_tlb(int(p[abi.P_TLB_SETS]), int(p[abi.P_TLB_WAYS]))
    return cfg, p, views, t, harness.kernel_args(views, p, t, kernels.seed_state(3, 0))


@pytest.mark.parametrize("refill", [0, 1, 5])
def test_a_full_flush_charges_the_next_n_accesses(refill):
    """directmap never flushes by itself: only the flush the test makes (a context switch) is refilled."""
    cfg, p, views, t, args = _state("directmap", refill)
    row = views["stats"][0]
    assert kernels.run_ops(20, 0, *args) == abi.ST_OK
    assert row[abi.S_REFILLS] == 0 and row[abi.S_REFILL_LEFT] == 0
    tlb.flush_all(t, p, views["dom"], views["vst"][0], row)
    assert row[abi.S_REFILL_LEFT] == refill
    assert kernels.run_ops(3, 0, *args) == abi.ST_OK
    assert row[abi.S_REFILLS] == min(3, refill) and row[abi.S_REFILL_LEFT] == max(0, refill - 3)
    assert kernels.run_ops(20, 0, *args) == abi.ST_OK
    assert row[abi.S_REFILLS] == refill and row[abi.S_REFILL_LEFT] == 0


def test_locked_wraps_pay_refills():
    """locked flushes at every wrap: each flush charges up to N accesses (fewer if the next wrap comes first)."""
    cfg, p, views, t, args = _state("locked", 8)
    row = views["stats"][0]
    assert kernels.run_ops(2000, 0, *args) == abi.ST_OK
    flushes = int(row[abi.S_FLUSH_ALL])
    assert flushes > 10
    assert flushes * 8 - 8 <= row[abi.S_REFILLS] <= flushes * 8
    _, _, views0, _, args0 = _state("locked", 0)
    assert kernels.run_ops(2000, 0, *args0) == abi.ST_OK
    assert views0["stats"][0, abi.S_REFILLS] == 0


def test_cost_refill_default_is_the_l1_dtlb():
    assert RunConfig().cost_refill == tlb.COST_REFILL == 64


@pytest.mark.parametrize("option", ["--cost-refill", "--cost-walk", "--cost-flush-one", "--cost-flush-all"])
def test_negative_cost_is_refused(option):
    r = testbed_cli("run", "--variant", "directmap", option, "-1", "--duration", "0.2")
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1, r.stderr
    assert option in r.stderr and "-1" in r.stderr and "0 or more" in r.stderr
