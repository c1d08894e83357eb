"""Statistics and reporting, driven by a fake clock and fake counters (no processes)."""

import json
import math
from pathlib import Path
from types import SimpleNamespace

import jsonschema
import numpy as np
import pytest

from testbed import abi, harness, results, stats, watchdog
from testbed.config import RunConfig, validate

SCHEMA = json.loads((Path(harness.__file__).parent / "schema.json").read_text())


class FakeClock:
    """Time advances only when the harness sleeps; each vCPU does `rate` ops per second meanwhile."""

    def __init__(self, stats_arr, rates, stall_after=None):
        self.t = 1000.0
        self.stats = stats_arr
        self.rates = rates
        self.stall_after = stall_after

    def __call__(self):
        return self.t

    def sleep(self, dt):
        dt = max(dt, 1e-3)
        for v, r in enumerate(self.rates):
            if self.stall_after is None or v != 0 or self.t - 1000.0 < self.stall_after:
                self.stats[v, abi.S_OPS] += int(r * dt)
                self.stats[v, abi.S_PROGRESS] += 1
        self.t += dt


def _state(rates, duration=3.0, warmup=1.0):
    cfg = validate(RunConfig(variant="directmap", vcpus=len(rates), duration=duration, warmup=warmup))
    views = {"ctl": np.zeros(abi.N_CTL, np.int64), "stats": np.zeros((len(rates), abi.N_STATS), np.int64)}
    views["stats"][:, abi.S_STATE] = abi.W_RUNNING
    procs = [SimpleNamespace(exitcode=None, pid=10 + v) for v in range(len(rates))]
    return harness.RunState(cfg, list(range(len(rates)))), procs, views


def test_sampling_with_a_fake_clock_excludes_warmup_and_counts_each_second():
    state, procs, views = _state([1000, 3000], duration=3.0, warmup=1.0)
    clock = FakeClock(views["stats"], [1000, 3000])
    seen = []
    harness._measure(state, procs, views, lambda s, cfg: seen.append(s), clock=clock, sleep=clock.sleep)
    assert views["ctl"][abi.C_START] == 1
    assert [round(s.t) for s in state.samples] == [1, 2, 3, 4]
    assert [s.warmup for s in state.samples] == [True, False, False, False]
    for s in state.samples:
        assert s.ops[0] == pytest.approx(1000, rel=0.02) and s.ops[1] == pytest.approx(3000, rel=0.02)
        d = s.as_dict()
        assert d["min"] == min(s.ops) and d["max"] == max(s.ops) and d["total"] == sum(s.ops)
    assert seen == state.samples
    start, end = state.window
    assert start == pytest.approx(1.0, abs=0.06) and end == pytest.approx(4.0, abs=0.06)
    measured = np.asarray(state.ops_at[1]) - np.asarray(state.ops_at[0])
    assert measured[0] / (end - start) == pytest.approx(1000, rel=0.03)
    assert measured[1] / (end - start) == pytest.approx(3000, rel=0.03)


def test_watchdog_with_a_fake_clock_finds_a_stalled_vcpu_within_a_second():
    state, procs, views = _state([1000, 1000], duration=10.0, warmup=0.0)
    clock = FakeClock(views["stats"], [1000, 1000], stall_after=2.0)
    stopped = lambda pid: ("T", 0.0)        # noqa: E731  (a SIGSTOPped process: state T, no CPU)
    harness._measure(state, procs, views, None, clock=clock, sleep=clock.sleep, probe=stopped)
    assert state.failure["kind"] == "stalled" and state.failure["vcpu"] == 0
    stalled_for = clock.t - 1000.0 - 2.0
    assert watchdog.STALL_S < stalled_for <= watchdog.STALL_S + 0.2


def test_watchdog_reports_a_dead_vcpu():
    state, procs, views = _state([10], duration=10.0, warmup=0.0)
    clock = FakeClock(views["stats"], [10])
    procs[0].exitcode = -9
    harness._measure(state, procs, views, None, clock=clock, sleep=clock.sleep)
    assert state.failure["kind"] == "killed" and state.failure["signal"] == "SIGKILL"


def test_stats_helpers():
    assert stats.median([3, 1, 2]) == 2
    assert stats.spread([1.0, 3.0, 2.0]) == 1.0
    assert stats.spread([5.0]) == 0.0
    assert stats.mad([15.2, 31.3, 30.5, 34.1, 38.4]) == pytest.approx(2.8)   # one slow repetition barely moves it
    assert stats.mad([1.0]) == 0.0
    assert stats.drop_pct(97.57, 100.0) == pytest.approx(2.43)
    assert stats.paired_drops([90, 99], [100, 100]) == pytest.approx([10.0, 1.0])
    assert stats.efficiency(190, 100, 2) == pytest.approx(0.95)
    assert math.isnan(stats.efficiency(1, 0, 2))
    assert stats.starvation([10, 4]) and not stats.starvation([10, 5]) and not stats.starvation([0, 0])


def test_latency_percentiles_from_the_log2_histogram():
    hist = np.zeros(abi.LAT_BINS, np.int64)
    hist[5] = 90      # 32..63 cycles
    hist[10] = 9      # 1024..2047
    hist[20] = 1
    lat = results.latency(hist, 1_500_000, 6)
    assert lat["p50"] == 64 and lat["p90"] == 64 and lat["p99"] == 2048 and lat["p99_9"] == 1 << 21
    assert lat["samples"] == 100 and lat["sampled_every_maps"] == 64
    assert results.latency(np.zeros(abi.LAT_BINS, np.int64), 0, 6)["p50"] is None


def _fake_result(state, views, **over):
    cfg = state.cfg
    n = cfg.vcpus
    kw = dict(cfg=cfg, cores=list(range(n)), stats=views["stats"], hist=np.zeros((n, abi.LAT_BINS), np.int64),
              samples=state.samples, window=state.window, ops_at=state.ops_at, lost_writes=0, writes_reported=0,
              writes_counted=0, variant_checks={}, failure=None, interrupted=None, startup={"total_s": 0.5},
              exitcodes=[0] * n, complete=True)
    kw.update(over)
    return results.build(**kw)


def test_result_verdicts_and_schema():
    state, procs, views = _state([1000, 3000], duration=2.0, warmup=0.0)
    clock = FakeClock(views["stats"], [1000, 3000])
    harness._measure(state, procs, views, None, clock=clock, sleep=clock.sleep)
    ok = _fake_result(state, views)
    assert ok["verdict"] == "SUCCESS" and ok["checks"]["violations"] == 0
    assert ok["fairness"]["starvation"]          # 1000 < 3000 / 2
    jsonschema.validate(ok, SCHEMA)
    lost = _fake_result(state, views, lost_writes=3)
    assert lost["verdict"] == "FAILURE" and lost["checks"]["violations"] == 3
    mismatch = _fake_result(state, views, writes_reported=10, writes_counted=7)
    assert mismatch["checks"]["lost_writes"] == 3
    killed = _fake_result(state, views, failure={"kind": "killed", "vcpu": 1, "message": "x"}, complete=False)
    assert killed["partial"] and killed["verdict"] == "FAILURE" and killed["checks"]["worker_failures"] == 1
    broken = dict(ok)
    del broken["checks"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, SCHEMA)


def test_results_refuse_comparison_across_hosts_and_configs(tmp_path):
    state, procs, views = _state([1000, 1000], duration=1.0, warmup=0.0)
    clock = FakeClock(views["stats"], [1000, 1000])
    harness._measure(state, procs, views, None, clock=clock, sleep=clock.sleep)
    a = _fake_result(state, views)
    b = json.loads(json.dumps(a))
    assert results.incomparable(a, b) == []
    b["seed"] = 7
    b["config"]["seed"] = 7
    assert results.incomparable(a, b) == []
    b["host"]["cpu_model"] = "Other CPU"
    b["config"]["frames"] = 12
    why = results.incomparable(a, b)
    assert any("cpu_model" in w for w in why) and any("frames" in w for w in why)


def test_reading_bad_results_files_gives_clear_errors(tmp_path):
    from testbed.errors import ResultsError

    trunc = tmp_path / "t.json"
    trunc.write_text('{"schema": 1, "kind": "testbed.run", "tot')
    with pytest.raises(ResultsError, match="not a complete results file"):
        results.read_json(str(trunc))
    other = tmp_path / "o.json"
    other.write_text(json.dumps({"schema": 99, "kind": "testbed.run"}))
    with pytest.raises(ResultsError, match="schema 99"):
        results.read_json(str(other))
    with pytest.raises(ResultsError, match="no such"):
        results.read_json(str(tmp_path / "missing.json"))
