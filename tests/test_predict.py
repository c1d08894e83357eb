"""``testbed predict``: the contention chain against its own closed forms, the fits against known
parameters, the wiring of fit and check points, the ping-pong, and bad input."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pytest

from testbed import contention, pingpong, predict
from testbed.contention import Lock
from testbed.topology import Topology

from test_cli import SPY
from conftest import REPO, cli_env

KINDS = contention.KINDS


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("n", [1, 2, 7, 64])
def test_never_contended_lock_scales_linearly_and_never_waits(kind, n):
    """A lock held for no time (s = 0): P_0 = 1, X = n / a, no wait, p99 0.

    Mutation tried: ``throughput`` without its s == 0 branch (the sum over empty states): nan, failed."""
    lk = Lock(kind, a=1000.0, s=0.0, c=300.0)
    p = contention.chain(lk, n)
    assert p[0] == pytest.approx(1.0)
    assert contention.throughput(lk, n) == pytest.approx(n / 1000.0)
    assert contention.speedup(lk, n) == pytest.approx(n)
    assert contention.mean_wait(lk, n) == 0.0
    assert contention.wait_quantile(lk, n) == 0.0


@pytest.mark.parametrize("kind, handoff", [("ticket", lambda n, c: c * n / 2), ("mcs", lambda n, c: c),
                                           ("tas", lambda n, c: c * (n - 1))])
@pytest.mark.parametrize("n", [2, 3, 16, 200])
def test_always_held_lock_serves_one_at_a_time_and_every_wait_is_the_queue(kind, handoff, n):
    """a = 0 (every CPU asks again at once): P_n = 1, X = 1 / S(n), S(n) = s + h(n), every wait
    (n - 1) S(n); on two CPUs the wait is exponential, p99 = ln(100) S(2).

    Mutation tried: the ticket handoff as c k instead of c k / 2: failed on X and the wait."""
    s, c = 500.0, 120.0
    lk = Lock(kind, a=0.0, s=s, c=c)
    S = s + handoff(n, c)
    assert contention.chain(lk, n)[n] == pytest.approx(1.0)
    assert contention.throughput(lk, n) == pytest.approx(1 / S)
    assert contention.speedup(lk, n) == pytest.approx(0.0)
    assert contention.mean_wait(lk, n) == pytest.approx((n - 1) * S)
    if n == 2:
        assert contention.wait_quantile(lk, 2) == pytest.approx(math.log(100) * S, rel=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_one_cpu_is_its_own_cycle_and_no_handoff_is_paid(kind):
    """On one CPU X = 1 / (a + s) whatever c: nobody to hand to. Mutation tried: h(1) = c / 2 for
    ticket (the paper's c k / 2 at k = 1): failed."""
    lk = Lock(kind, a=3000.0, s=700.0, c=5000.0)
    assert contention.throughput(lk, 1) == pytest.approx(1 / 3700.0)
    assert contention.mean_wait(lk, 1) == 0.0


@pytest.mark.parametrize("n", [2, 5, 30])
def test_without_handoff_the_chain_is_the_machine_repairman_queue(n):
    """c = 0: P_k ~ n! / (n - k)! (s / a)**k, and throughput balances arrivals: X = sum P_k (n - k) / a.

    Mutation tried: the birth rate (n - k) / a as (n - k + 1) / a in ``chain``: failed."""
    a, s = 2000.0, 300.0
    lk = Lock("ticket", a, s, 0.0)
    w = np.array([math.factorial(n) / math.factorial(n - k) * (s / a) ** k for k in range(n + 1)])
    np.testing.assert_allclose(contention.chain(lk, n), w / w.sum(), rtol=1e-9)
    assert contention.throughput(lk, n) == pytest.approx(contention.speedup(lk, n) / a)


@pytest.mark.parametrize("kind", KINDS)
def test_chain_balances_and_the_wait_distribution_is_one(kind):
    """Every state's flow up equals its flow down; the wait's CDF climbs to 1 and its quantile inverts it."""
    lk = Lock(kind, a=900.0, s=400.0, c=150.0)
    n = 12
    p = contention.chain(lk, n)
    for k in range(n):
        assert p[k] * (n - k) / lk.a == pytest.approx(p[k + 1] / float(contention.service(lk, k + 1)))
    q = contention.wait_quantile(lk, n, 0.99)
    assert contention.wait_cdf(lk, n, q) == pytest.approx(0.99, abs=1e-4)
    assert contention.wait_cdf(lk, n, 1e12) == pytest.approx(1.0)


def test_ticket_collapses_and_mcs_saturates():
    """The paper's finding: with a handoff comparable to the critical section a ticket lock's
    throughput falls past its peak; MCS's constant handoff plateaus (no collapse)."""
    t = [contention.throughput(Lock("ticket", 20000.0, 400.0, 300.0), n) for n in range(1, 257)]
    m = [contention.throughput(Lock("mcs", 20000.0, 400.0, 300.0), n) for n in range(1, 257)]
    assert contention.collapse(t) is not None and contention.collapse(t) < 256
    assert t[-1] < 0.5 * max(t)
    assert contention.collapse(m) is None
    assert m[-1] == pytest.approx(1 / 700.0, rel=1e-3)


def test_usl_fit_recovers_known_parameters():
    """Synthetic points from lam, sigma, kappa give them back; residuals are zero.

    Mutation tried: the kappa column as n**2 instead of n (n - 1): failed."""
    ns = [1, 2, 3, 4, 6, 8]
    xs = contention.usl(ns, 1000.0, 0.05, 0.002)
    f = contention.fit_usl(ns, xs)
    assert f["lam"] == pytest.approx(1000.0)
    assert f["sigma"] == pytest.approx(0.05, rel=1e-6)
    assert f["kappa"] == pytest.approx(0.002, rel=1e-6)
    assert max(abs(r) for r in f["residuals_pct"]) < 1e-6
    with pytest.raises(ValueError):
        contention.fit_usl([1, 2], xs[:2])


@pytest.mark.parametrize("kind", KINDS)
def test_handoff_fit_recovers_c(kind):
    """Acquisitions per cycle from the chain at 2..4 CPUs with c = 240 give c = 240 back."""
    a, s = 1500.0, 350.0
    ns = [2, 3, 4]
    xs = [contention.throughput(Lock(kind, a, s, 240.0), n) for n in ns]
    f = contention.fit_handoff(kind, a, s, ns, xs, c_hint=100.0)
    assert f["c"] == pytest.approx(240.0, rel=1e-3)


def _run(label, n, seed, rate, *, acq=0.0, hold=0.0, maps=1.0, hz=1e9, spin=0.0):
    ops = 10**6
    return {"label": label, "vcpus": n, "seed": seed, "host": {"tsc_hz": hz}, "verdict": "SUCCESS",
            "totals": {"ops_per_s": rate, "all_ops": ops, "maps": int(maps * ops),
                       "lock_acquisitions": int(acq * ops), "lock_hold_cycles": int(hold * 1000),
                       "lock_hold_samples": 1000 if hold else 0, "lock_spin_cycles": int(spin * acq * ops),
                       "lock_handoff_cycles": 0, "lock_handoffs": 0, "tlb_flush_all": 0}}


def test_build_checks_only_points_outside_the_fit():
    """Measured points that are exactly the model's give zero error; the fit's own point carries no error;
    the JSON parts the issue names are there. Mutation tried: ``error_pct`` computed for fit points too
    (``None if used`` dropped): failed on the fit point's check."""
    hz = 1e9
    lk = Lock("ticket", a=2000.0, s=500.0, c=100.0)
    x1 = hz / 2500.0                       # one acquisition per op
    x2 = contention.throughput(lk, 2) * hz
    runs = [_run("directmap", 1, 1, 2 * x1), _run("directmap", 2, 1, 4 * x1),
            _run("locked:ticket", 1, 1, x1, acq=1.0, hold=500.0),
            _run("locked:ticket", 2, 1, x2, acq=1.0, hold=500.0, spin=contention.mean_wait(lk, 2))]
    res = predict.build({"runs": runs}, {}, [], {"cycles": 100.0, "spread": 1.0, "relation": "same socket"}, hz,
                        [1, 2], [1], 64, None)
    d = next(x for x in res["designs"] if x["design"] == "locked:ticket")
    one, two = d["points"]
    assert one["fit"] and one["error_pct"] is None
    assert not two["fit"] and two["error_pct"] == pytest.approx(0.0, abs=1e-9)
    assert two["predicted_wait_cycles"] == pytest.approx(two["measured_wait_cycles"], rel=1e-3)
    assert d["inputs"]["a_cycles"]["value"] == pytest.approx(2000.0)
    assert {"model", "inputs", "fit", "residuals_pct", "points"} <= set(d)
    assert d["curve"][-1]["pcpus"] == 64 and res["designs"][0]["design"] == "directmap"


def test_seed_rate_inverts_the_drop():
    """The rate that explains a drop, put back through the no-lock model at one CPU, gives the drop."""
    hz, extra = 2.5e9, 400.0
    r = predict.rate_for(0.18, extra, hz)
    m = predict.Design("lockless", None, 10000.0, 0.0, 0.0, None, 100.0, hz)
    assert predict.multi_drop(m, r, extra, 1.0, hz, 1) == pytest.approx(0.18)
    assert predict.multi_drop(m, r, extra, 1.0, hz, 32) == pytest.approx(0.18)   # no lock, no flush: flat


def test_cpu_pairs_one_of_each_relation():
    """Siblings, two cores of a socket, two sockets: one pair of each, in that order."""
    from testbed.topology import Cpu

    where = {0: (0, 0), 1: (0, 0), 2: (1, 0), 3: (2, 1)}          # cpu -> (core, package)
    cpus = {c: Cpu(c, core, core, pkg, pkg, tuple(x for x, (k, _) in where.items() if k == core))
            for c, (core, pkg) in where.items()}
    topo = Topology(cpus, (0, 1), None, (), (0, 1, 2, 3), (0, 1))
    assert pingpong.cpu_pairs(topo, [0, 1, 2, 3]) == [("siblings", 0, 1), ("same socket", 0, 2),
                                                    ("across sockets", 0, 3)]
    assert pingpong.cpu_pairs(topo, [2]) == []


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs")
def test_pingpong_measures_a_transfer():
    """Two pinned players: a transfer costs more than nothing and less than a millisecond."""
    from testbed.timing import tsc_hz

    a, b = sorted(os.sched_getaffinity(0))[:2]
    hz = tsc_hz()
    m = pingpong.measure_pair(a, b, hz, repeats=2)
    assert 1 < m["cycles"] < hz / 1000


@pytest.mark.parametrize("args, words", [(("--to", "0"), ("--to 0",)), (("--variants", "nosuch"), ("nosuch",)),
                                         (("--lock", "nosuch"), ("nosuch",)), (("--repeat", "0"), ("--repeat",))])
def test_bad_input_exits_2_and_starts_nothing(tmp_path, args, words):
    """Mutation tried: the --to check moved after the ping-pong: the spy saw forks, failed."""
    log = tmp_path / "spawned.log"
    log.write_text("")
    env = cli_env({"TB_SPAWN_LOG": str(log), "PYTHONPATH": str(REPO)})    # this checkout, not an installed copy
    p = subprocess.run([sys.executable, "-c", SPY, "predict", *args], cwd=tmp_path, capture_output=True, text=True,
                       env=env, timeout=120)
    assert p.returncode == 2, (p.returncode, p.stderr)
    spawned = log.read_text().splitlines()
    lines = p.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    for w in words:
        assert w in lines[0], lines[0]
    assert spawned == [], f"bad input started {spawned}"


def test_extra_cycles_per_map_is_the_time_over_the_baseline_per_map():
    """compare's column: a run at 1e6 ops/s with 2 maps an op against a baseline at 2e6 ops/s on a
    1 GHz counter spends 500 cycles an op more, 250 a map. Mutation tried: dividing by all_ops
    over maps (maps per op inverted): failed."""
    from testbed.experiments import extra_cycles_per_map

    run = {"totals": {"ops_per_s": 1e6, "maps": 2000, "all_ops": 1000}, "host": {"tsc_hz": 1e9}}
    ref = {"totals": {"ops_per_s": 2e6, "maps": 1000, "all_ops": 1000}, "host": {"tsc_hz": 1e9}}
    assert extra_cycles_per_map(run, ref) == pytest.approx(250.0)


SLOW = pytest.mark.skipif(not os.environ.get("TESTBED_SLOW"),
                          reason="runs the designs (about 15 s on a 2-core host): TESTBED_SLOW=1")


@SLOW
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs")
def test_predict_end_to_end_writes_a_valid_result_and_a_report_plot(tmp_path):
    """The command a user runs: curve, collapse line, checks, verdict; the JSON validates against the
    schema; ``testbed report`` plots it."""
    import json

    import jsonschema

    out = tmp_path / "p.json"
    env = cli_env({"PYTHONPATH": str(REPO)})
    p = subprocess.run([sys.executable, "-m", "testbed", "predict", "--variants", "locked,lockless", "--lock",
                        "ticket", "--to", "64", "--seed-table", "--duration", "0.3", "--warmup", "0.1", "--repeat",
                        "1", "--json", str(out)], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "collapse:" in p.stdout and "unvalidated beyond" in p.stdout and "check at 2 pCPUs" in p.stdout
    assert "The seed's table read backwards" in p.stdout
    assert p.stdout.splitlines()[-1].startswith("verdict: ")
    assert all(len(line) <= 100 for line in p.stdout.splitlines()), "a line wider than 100 columns"
    res = json.loads(out.read_text())
    jsonschema.validate(res, json.loads((REPO / "testbed" / "schema.json").read_text()))
    r = subprocess.run([sys.executable, "-m", "testbed", "report", str(tmp_path)], cwd=tmp_path,
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert list(tmp_path.glob("predict-*.png"))


def test_results_hold_no_infinity():
    """A rate band open at the top (no upper bound) is written as null: JSON has no Infinity."""
    import json

    out = predict.finite({"band": [1.0, math.inf], "x": np.float64(2.5), "n": np.int64(3), "nan": float("nan")})
    assert out == {"band": [1.0, None], "x": 2.5, "n": 3, "nan": None}
    json.dumps(out, allow_nan=False)


def test_validate_fits_on_the_first_four_and_checks_the_rest():
    """What ``--validate`` does on an 8-core host, on points the chain made with c = 180 while the
    ping-pong said 100: the fit finds c from 2..4 pCPUs, the checks at 5..8 are exact, the USL is
    fitted on 1..4 and checked at 5..8. Mutation tried: ``fit_design`` ignoring fit points past 1
    (c stays the ping-pong's 100): failed."""
    hz = 1e9
    truth = Lock("ticket", a=3000.0, s=600.0, c=180.0)
    counts = list(range(1, 9))
    runs = [_run("directmap", n, 1, n * hz / 2000.0) for n in counts]
    runs += [_run("locked:ticket", n, 1, contention.throughput(truth, n) * hz, acq=1.0, hold=600.0) for n in counts]
    res = predict.build({"runs": runs}, {}, [], {"cycles": 100.0, "spread": 1.0, "relation": "same socket"}, hz,
                        counts, [1, 2, 3, 4], 64, None)
    d = next(x for x in res["designs"] if x["design"] == "locked:ticket")
    assert d["inputs"]["c_cycles"]["value"] == pytest.approx(180.0, rel=1e-3)
    assert [p["pcpus"] for p in d["points"] if not p["fit"]] == [5, 6, 7, 8]
    assert all(abs(p["error_pct"]) < 0.01 for p in d["points"] if not p["fit"])
    assert d["usl"]["fitted"] and [c["pcpus"] for c in d["usl"]["checks"]] == [5, 6, 7, 8]
