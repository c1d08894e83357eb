"""The user-facing commands end to end, at tiny durations."""

import csv
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import psutil
import pytest

from conftest import cli_env, kill_pids, testbed_cli

SCHEMA = json.loads((Path(__file__).resolve().parent.parent / "testbed" / "schema.json").read_text())
TINY = ["--duration", "0.3", "--warmup", "0", "--frames", "256", "--seed", "3"]


def test_compare_prints_the_table_and_writes_valid_json(tmp_path, exclusive, no_leftovers):
    out = tmp_path / "cmp.json"
    r = testbed_cli("compare", *TINY, "--repeat", "2", "--json", out, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Performance drop against directmap" in r.stdout and "seed 3" in r.stdout
    assert "larger than" in r.stdout or "within" in r.stdout
    res = json.loads(out.read_text())
    jsonschema.validate(res, SCHEMA)
    assert [row["variant"] for row in res["rows"]] == ["locked", "lockless", "percpu", "kmap-local"]
    assert res["vcpus_multi"] == 2 and len(res["runs"]) == 20
    assert {r["seed"] for r in res["runs"]} == {3, 4}


def test_scale_writes_csv_and_plot(tmp_path, exclusive, no_leftovers):
    csv_path, png, js = tmp_path / "s.csv", tmp_path / "s.png", tmp_path / "s.json"
    r = testbed_cli("scale", *TINY, "--variants", "directmap,lockless", "--vcpus", "1,2", "--csv", csv_path,
                    "--plot", png, "--json", js, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    rows = list(csv.DictReader(csv_path.open()))
    assert [(row["variant"], row["vcpus"]) for row in rows] == [("directmap", "1"), ("directmap", "2"),
                                                               ("lockless", "1"), ("lockless", "2")]
    for key in ("ops_per_s", "linear", "efficiency", "p99_cycles"):
        assert all(row[key] for row in rows)
    one = float(rows[0]["ops_per_s"])
    assert float(rows[1]["linear"]) == pytest.approx(2 * one, rel=1e-3)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    jsonschema.validate(json.loads(js.read_text()), SCHEMA)


def test_scale_oversubscribed(tmp_path, exclusive, no_leftovers):
    r = testbed_cli("scale", *TINY, "--variants", "lockless", "--vcpus", "1,4", "--oversubscribe", timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    r = testbed_cli("scale", *TINY, "--variants", "lockless", "--vcpus", "1,4")
    assert r.returncode == 2 and "--oversubscribe" in r.stderr


def test_timers_reports_etime_and_panics(tmp_path, exclusive, no_leftovers):
    js = tmp_path / "t.json"
    r = testbed_cli("timers", "--vcpus", "4", "--oversubscribe", "--duration", "0.5", "--warmup", "0",
                    "--seed", "3", "--json", js, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    res = json.loads(js.read_text())
    jsonschema.validate(res, SCHEMA)
    rows = {(row["variant"], row["sched"]): row for row in res["rows"]}
    # 4 vCPUs on fewer CPUs: every design under both scheduling models, each named in the output
    assert set(rows) == {(v, m) for v in ("locked", "lockless", "percpu", "kmap-local")
                         for m in ("hypervisor", "host")}, set(rows)
    assert "hypervisor: the testbed schedules" in r.stdout and "host: the host's scheduler" in r.stdout
    for row in rows.values():
        assert row["timer_sets"] > 0 and 0 <= row["etime_rate"] <= 1 and row["worst_streak"] >= 0
    # a hypercall that waits for a preempted lock holder takes longer than one that does not
    assert rows[("locked", "host")]["mean_path_us"] > rows[("lockless", "host")]["mean_path_us"]


def test_run_repeat_and_csv(tmp_path, exclusive, no_leftovers):
    c, js = tmp_path / "r.csv", tmp_path / "r.json"
    r = testbed_cli("run", "--variant", "lockless", "--vcpus", "1", *TINY, "--repeat", "2", "--csv", c, "--json", js)
    assert r.returncode == 0, r.stdout + r.stderr
    rows = list(csv.DictReader(c.open()))
    assert [row["seed"] for row in rows] == ["3", "4"]
    res = json.loads(js.read_text())
    jsonschema.validate(res, SCHEMA)
    assert res["kind"] == "testbed.repeat" and len(res["runs"]) == 2


def test_diff_refuses_other_configs_unless_forced(tmp_path, exclusive, no_leftovers):
    a, b, c = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "c.json"
    for path, frames in ((a, 256), (b, 256), (c, 128)):
        r = testbed_cli("run", "--variant", "directmap", "--vcpus", "1", "--duration", "0.2", "--warmup", "0",
                        "--frames", frames, "--quiet", "--json", path)
        assert r.returncode == 0, r.stderr
    assert testbed_cli("diff", a, b).returncode == 0
    r = testbed_cli("diff", a, c)
    assert r.returncode == 2 and "frames" in r.stderr and "--force" in r.stderr and len(r.stderr.splitlines()) == 1
    assert testbed_cli("diff", a, c, "--force").returncode == 0
    (tmp_path / "bad.json").write_text('{"schema": 1, "kind": "testbed.run", "var')
    r = testbed_cli("diff", a, tmp_path / "bad.json")
    assert r.returncode == 2 and "Traceback" not in r.stderr and "not a complete results file" in r.stderr


def test_stress_finds_every_control_and_passes_real_variants(tmp_path, exclusive, no_leftovers):
    js = tmp_path / "st.json"
    r = testbed_cli("stress", "--variants", "locked,lockless", "--duration", "1.5", "--seed", "3", "--shuffle",
                    "0.3", "--stutter", "0.4", "--long-hold", "200", "--json", js, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "locked: SUCCESS" in r.stdout and "lockless: SUCCESS" in r.stdout
    assert r.stdout.count("shuffle=0.3") == 2                 # echoed at start and at end
    res = json.loads(js.read_text())
    jsonschema.validate(res, SCHEMA)
    assert res["verdicts"] == {"locked": "SUCCESS", "lockless": "SUCCESS"}
    for run in res["runs"]:
        assert run["stress"]["moves"] > 0 and run["stress"]["quiescent_checks"] > 0
    r = testbed_cli("stress", "--variants", "locked-nolock,locked-noflush,lockless-noflush", "--duration", "3",
                    "--seed", "3", timeout=300)
    assert r.returncode == 1, r.stdout + r.stderr
    for name in ("locked-nolock", "locked-noflush", "lockless-noflush"):
        line = next(x for x in r.stdout.splitlines() if x.startswith(f"{name}: "))
        assert "FAILURE" in line and "seed 3" in line and "replay: testbed stress" in line


def test_stress_stop_injection_reports_the_lock_holder(tmp_path, exclusive, no_leftovers):
    r = testbed_cli("stress", "--variants", "locked", "--duration", "3", "--seed", "3", "--inject", "stop",
                    "--on-stall", "resume", timeout=300)
    assert r.returncode == 1, r.stdout + r.stderr
    line = next(x for x in r.stdout.splitlines() if x.startswith("locked: "))
    assert "made no progress" in line and "process status: stopped" in line and "holds lock" in line
    assert "resumed" in line


def test_scale_shows_each_lock_of_locked(tmp_path, exclusive, no_leftovers):
    js = tmp_path / "s.json"
    r = testbed_cli("scale", *TINY, "--variants", "locked,percpu", "--lock", "ticket,mcs,tas", "--vcpus", "1,2",
                    "--json", js, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    res = json.loads(js.read_text())
    jsonschema.validate(res, SCHEMA)
    labels = [row["variant"] for row in res["rows"]]
    assert labels == ["locked:ticket"] * 2 + ["locked:mcs"] * 2 + ["locked:tas"] * 2 + ["percpu"] * 2
    for row in res["rows"]:
        if row["variant"].startswith("locked:"):
            assert row["lock"] == row["variant"].split(":")[1] and 0 < row["lock_fairness"] <= 1
        else:
            assert row["lock"] is None and row["lock_fairness"] is None
    assert {r["config"]["lock"] for r in res["runs"] if r["variant"] == "locked"} == {"ticket", "mcs", "tas"}
    assert "locked:mcs" in r.stdout and "fairness" in r.stdout
    r = testbed_cli("scale", *TINY, "--variants", "lockless,percpu", "--lock", "mcs")
    assert r.returncode == 2 and "--lock" in r.stderr and "ticket, mcs, tas" in r.stderr
    assert len(r.stderr.splitlines()) == 1


# --- an experiment stopped by a signal keeps what it finished ------------------------------------


@pytest.mark.parametrize("sig, code, argv, rows", [
    (signal.SIGINT, 130, ["scale", "--variants", "lockless", "--vcpus", "1,2"], [("lockless", 1)]),
    (signal.SIGTERM, 143, ["compare", "--variants", "lockless", "--vcpus", "2", "--repeat", "1"], [("lockless", None)]),
], ids=["scale-SIGINT", "compare-SIGTERM"])
def test_interrupted_experiment_writes_its_finished_rows_marked_partial(tmp_path, exclusive, no_leftovers, sig, code,
                                                                          argv, rows):
    """Ctrl-C (SIGTERM) while the first 2-vCPU run of scale (compare) runs: the 1-vCPU cells are in --json.

    Mutation that makes it fail: in experiments._until_interrupted, drop the ``except`` clause
    (the signal then ends the command before anything is written).
    """
    out = tmp_path / "out.json"
    p = subprocess.Popen([sys.executable, "-m", "testbed", *argv, "--duration", "2", "--warmup", "0", "--frames",
                          "256", "--seed", "3", "--json", str(out)], cwd=tmp_path, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=cli_env())
    try:
        deadline = time.monotonic() + 180
        while len(psutil.Process(p.pid).children()) < 2:      # the first 2-vCPU run has started
            assert p.poll() is None and time.monotonic() < deadline, p.communicate()
            time.sleep(0.02)
        p.send_signal(sig)
        stdout, stderr = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            kill_pids([p.pid])
            p.wait(10)
    assert p.returncode == code, stdout + stderr
    res = json.loads(out.read_text())
    jsonschema.validate(res, SCHEMA)
    assert res["partial"] is True and res["interrupted"] == signal.Signals(sig).name
    assert res["runs"] and all(r["vcpus"] == 1 and not r["interrupted"] for r in res["runs"])
    if argv[0] == "scale":
        assert [(r["variant"], r["vcpus"]) for r in res["rows"]] == rows
    else:
        (row,) = res["rows"]
        assert row["variant"] == "lockless" and row["single_drop_pct"] is not None and row["multi_drop_pct"] is None
    assert "results are partial" in stdout
