"""The cost model's parameters: --cost-refill charged where it should be, bad costs refused.

``--cost-refill N``: after a full flush the next N guest accesses each pay a walk.
Mutation tried: in ``tlb.flush_all``, not setting ``S_REFILL_LEFT``: no refill is ever
charged: 3 of the tests below fail.
"""

from __future__ import annotations

import pytest

from testbed import abi, config, harness, loops, tlb
from testbed.config import RunConfig

from conftest import testbed_cli


def _state(variant, refill, vcpus=1):
    cfg = config.validate(RunConfig(variant=variant, vcpus=vcpus, frames=256, seed=3, cost_flush_one=0,
                                    cost_flush_all=0, cost_walk=0, cost_refill=refill))
    p = config.params(cfg)
    p[abi.P_CHUNK_CYCLES] = 1 << 62
    return (cfg, p, *harness.private_state(cfg, p))


@pytest.mark.parametrize("refill", [0, 1, 5])
def test_a_full_flush_charges_the_next_n_accesses(refill):
    """directmap never flushes by itself: only the flush the test makes (a context switch) is refilled."""
    cfg, p, views, t, args = _state("directmap", refill)
    row = views["stats"][0]
    assert loops.run_ops(20, 0, *args) == abi.ST_OK
    assert row[abi.S_REFILLS] == 0 and row[abi.S_REFILL_LEFT] == 0
    tlb.flush_all(t, p, views["dom"], views["vst"][0], row)
    assert row[abi.S_REFILL_LEFT] == refill
    assert loops.run_ops(3, 0, *args) == abi.ST_OK
    assert row[abi.S_REFILLS] == min(3, refill) and row[abi.S_REFILL_LEFT] == max(0, refill - 3)
    assert loops.run_ops(20, 0, *args) == abi.ST_OK
    assert row[abi.S_REFILLS] == refill and row[abi.S_REFILL_LEFT] == 0


def test_locked_wraps_pay_refills():
    """locked flushes at every wrap: each flush charges up to N accesses (fewer if the next wrap comes first)."""
    cfg, p, views, t, args = _state("locked", 8)
    row = views["stats"][0]
    assert loops.run_ops(2000, 0, *args) == abi.ST_OK
    flushes = int(row[abi.S_FLUSH_ALL])
    assert flushes > 10
    assert flushes * 8 - 8 <= row[abi.S_REFILLS] <= flushes * 8
    _, _, views0, _, args0 = _state("locked", 0)
    assert loops.run_ops(2000, 0, *args0) == abi.ST_OK
    assert views0["stats"][0, abi.S_REFILLS] == 0


def test_cost_refill_default_is_the_l1_dtlb():
    assert RunConfig().cost_refill == tlb.COST_REFILL == 64


@pytest.mark.parametrize("option", ["--cost-refill", "--cost-walk", "--cost-flush-one", "--cost-flush-all"])
def test_negative_cost_is_refused(option):
    r = testbed_cli("run", "--variant", "directmap", option, "-1", "--duration", "0.2")
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1, r.stderr
    assert option in r.stderr and "-1" in r.stderr and "0 or more" in r.stderr


# --- compare --sweep ---------------------------------------------------------------------

from testbed import experiments  # noqa: E402


def test_parse_sweep():
    assert experiments.parse_sweep("cost-flush-one=50,200,800") == ("cost-flush-one", [50, 200, 800])
    assert experiments.parse_sweep("--cost-refill=0, 64") == ("cost-refill", [0, 64])


@pytest.mark.parametrize("text,words", [
    ("bogus=1,2", "cost-flush-one, cost-flush-all, cost-walk, cost-refill"), ("cost-walk=", "empty"),
    ("cost-walk", "OPTION=v1,v2"), ("cost-walk=1,x", "'x' is not a whole number"), ("cost-walk=1,,2", "empty"),
    ("cost-walk=-5", "0 or more"), ("guest-work=1,2", "cost-walk")])
def test_bad_sweep_is_refused_in_one_line(text, words):
    r = testbed_cli("compare", "--sweep", text, "--duration", "0.1")
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1 and r.stdout == "", r.stdout + r.stderr
    assert "--sweep" in r.stderr and words in r.stderr, r.stderr


def _rows(spread=0.5, **drops):
    return [{"variant": v, "single_drop_pct": s, "multi_drop_pct": m, "single_spread_pct": spread,
             "multi_spread_pct": spread} for v, (s, m) in drops.items()]


def test_sweep_verdict_names_the_flip():
    """Mutation tried: ``before.index`` for ``after.index`` in ``sweep_verdict``: no flip is reported."""
    tables = [_rows(locked=(5.0, 30.0), lockless=(10.0, 20.0)), _rows(locked=(6.0, 31.0), lockless=(9.0, 20.0)),
              _rows(locked=(8.0, 30.0), lockless=(4.0, 21.0))]
    single, multi = experiments.sweep_verdict("cost-flush-one", [50, 200, 800], tables)
    assert single == ("single-core: the ordering flips between cost-flush-one=200 and 800: locked ahead of lockless "
                      "(+6.00% +/- 0.50 vs +9.00% +/- 0.50), then lockless ahead of locked "
                      "(+4.00% +/- 0.50 vs +8.00% +/- 0.50)")
    assert multi == "multi-core: no flip: the same ordering at every cost-flush-one (lockless, locked, least drop first)"


def test_sweep_verdict_weighs_the_spreads():
    """The same medians as above with spreads larger than the gaps: no flip, the change said to be within
    the spreads. A flip counts only when the gap beats the spreads at both values: with small spreads at
    200 and big ones at 800, still no flip.

    Mutation tried: ``return abs(d1 - d2) > 0`` in ``_apart`` (spreads ignored): the flip is reported again.
    """
    medians = [dict(locked=(5.0, 30.0), lockless=(10.0, 20.0)), dict(locked=(6.0, 31.0), lockless=(9.0, 20.0)),
               dict(locked=(8.0, 30.0), lockless=(4.0, 21.0))]
    tables = [_rows(spread=3.0, **m) for m in medians]
    single, multi = experiments.sweep_verdict("cost-flush-one", [50, 200, 800], tables)
    assert single.startswith("single-core: no flip beyond the spreads: the ordering changes only within the "
                             "spreads, between cost-flush-one=200 and 800: locked ahead of lockless "
                             "(+6.00% +/- 3.00 vs +9.00% +/- 3.00)"), single
    assert "flips" not in single
    assert multi.startswith("multi-core: no flip: the same ordering")
    mixed = [_rows(spread=0.5, **medians[0]), _rows(spread=0.5, **medians[1]), _rows(spread=2.5, **medians[2])]
    assert "flips" not in experiments.sweep_verdict("cost-flush-one", [50, 200, 800], mixed)[0]
    # interrupted cells carry no spread: they cannot vouch for an ordering
    gone = [_rows(spread=None, **m) for m in medians]
    assert "flips" not in experiments.sweep_verdict("cost-flush-one", [50, 200, 800], gone)[0]


def test_compare_sweep_end_to_end(tmp_path, exclusive, no_leftovers):
    """A table per value, a verdict line per scope, and every cost recorded for every run."""
    import json
    from pathlib import Path

    import jsonschema

    js = tmp_path / "sw.json"
    r = testbed_cli("compare", "--sweep", "cost-refill=0,512", "--variants", "lockless,locked", "--duration", "0.2",
                    "--warmup", "0", "--repeat", "1", "--frames", "256", "--seed", "3", "--json", js, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("Performance drop against directmap") == 2
    assert "=== cost-refill=0 (" in r.stdout and "=== cost-refill=512 (" in r.stdout
    # the sweep's lines ("findings: single-core: ..."), not each table's ("findings: single-core (1 vCPU): ...")
    verdicts = [x for x in r.stdout.splitlines() if x.startswith(("findings: single-core:", "findings: multi-core:"))]
    assert [v.split()[1] for v in verdicts] == ["single-core:", "multi-core:"]
    assert r.stdout.splitlines()[-1].startswith("verdict: SUCCESS")
    res = json.loads(js.read_text())
    schema = json.loads((Path(__file__).resolve().parent.parent / "testbed" / "schema.json").read_text())
    jsonschema.validate(res, schema)
    sw = res["sweep"]
    assert sw["option"] == "cost-refill" and sw["values"] == [0, 512] and len(sw["tables"]) == 2
    assert [f"findings: {v}" for v in sw["verdict"]] == verdicts
    assert sorted({row["sweep_value"] for row in res["rows"]}) == [0, 512]
    for run in res["runs"]:
        assert {"cost_flush_one", "cost_flush_all", "cost_walk", "cost_refill"} <= set(run["config"])
    assert sorted({run["config"]["cost_refill"] for run in res["runs"]}) == [0, 512]
