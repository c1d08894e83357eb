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

from testbed import config
from testbed import variants as registry

from conftest import alive as alive_pid
from conftest import cli_env, kill_pids, slow, testbed_cli

SCHEMA = json.loads((Path(__file__).resolve().parent.parent / "testbed" / "schema.json").read_text())
TINY = ["--duration", "0.3", "--warmup", "0", "--frames", "256", "--seed", "3"]


def test_compare_prints_the_table_and_writes_valid_json(tmp_path, exclusive, no_leftovers):
    out = tmp_path / "cmp.json"
    r = testbed_cli("compare", *TINY, "--repeat", "2", "--json", out, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Performance drop against directmap" in r.stdout and "seed 3" in r.stdout
    res = json.loads(out.read_text())
    # Two repetitions support no claim: every significant is null, and the findings say so per scope.
    # Mutation tried: MIN_REPEAT = 2 in testbed/stats.py: intervals appear and the test fails.
    for row in res["rows"]:
        for scope in ("single", "multi"):
            assert row[f"{scope}_significant"] is None and row[f"{scope}_ci_pct"] is None
    findings = [x for x in r.stdout.splitlines() if x.startswith("findings: ")]
    assert len(findings) == 2 and all("not enough repetitions to tell (2" in x for x in findings), r.stdout
    assert r.stdout.rstrip().splitlines()[-1].startswith("verdict: SUCCESS")
    jsonschema.validate(res, SCHEMA)
    assert [row["variant"] for row in res["rows"]] == list(registry.DESIGNS)
    assert res["vcpus_multi"] == 2 and len(res["runs"]) == 2 * 2 * (1 + len(registry.DESIGNS))  # 2 repeats, 1 and 2 vCPUs
    assert {r["seed"] for r in res["runs"]} == {3, 4}
    # the cycles per map each design adds on one vCPU (predict --seed-table reads it), in the table and the JSON
    assert "cycles/map extra" in r.stdout
    assert all(row["extra_cycles_per_map"] is not None for row in res["rows"])


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
    """4 vCPUs on 2 CPUs: a row per scheduling model, every vCPU ran and (hypervisor model) was switched.

    Mutation tried: ``HypervisorSched.tick`` returning at once (no vCPU hands its CPU over): two
    vCPUs of the hypervisor row complete no operation.
    """
    js = tmp_path / "s.json"
    r = testbed_cli("scale", *TINY, "--variants", "lockless", "--vcpus", "1,4", "--oversubscribe", "--json", js,
                    timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    res = json.loads(js.read_text())
    jsonschema.validate(res, SCHEMA)
    assert [(row["vcpus"], row["sched"], row["verdict"]) for row in res["rows"]] == [
        (1, "dedicated", "SUCCESS"), (4, "hypervisor", "SUCCESS"), (4, "host", "SUCCESS")]
    assert all(row["ops_per_s"] > 0 for row in res["rows"])
    for run in res["runs"]:
        if run["vcpus"] != 4:
            continue
        assert run["sched"]["cpus"] < 4 and len(run["per_vcpu"]) == 4
        assert all(v["ops"] > 0 for v in run["per_vcpu"]), [v["ops"] for v in run["per_vcpu"]]
        if run["sched"]["model"] == "hypervisor":
            assert all(v["switches"] > 0 for v in run["per_vcpu"]), [v["switches"] for v in run["per_vcpu"]]
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
    assert set(rows) == {(v, m) for v in registry.DESIGNS
                         for m in ("hypervisor", "host")}, set(rows)
    assert "hypervisor: the testbed schedules" in r.stdout and "host: the host's scheduler" in r.stdout
    for row in rows.values():
        assert row["timer_sets"] > 0 and 0 <= row["etime_rate"] <= 1 and row["worst_streak"] >= 0
    # a hypercall that waits for a preempted lock holder takes longer than one that does not
    assert rows[("locked", "host")]["mean_path_us"] > rows[("lockless", "host")]["mean_path_us"]


def _timer_rows(tmp_path, name, slack_us):
    js = tmp_path / name
    r = testbed_cli("timers", "--vcpus", "1", "--duration", "0.4", "--warmup", "0", "--seed", "3",
                    "--slack-us", slack_us, "--json", js, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    rows = json.loads(js.read_text())["rows"]
    assert {row["variant"] for row in rows} == set(registry.DESIGNS)
    return rows


@slow("three timers runs end to end (about 8 s)")
def test_timers_etime_follows_the_slack(tmp_path, exclusive, no_leftovers):
    """Deadlines that cannot pass give no -ETIME; deadlines that always pass give -ETIME every time.

    A slack of 1 ns is shorter than any hypercall burst, so every timer is late and every run of
    PANIC_STREAK late timers is a panic; a slack of 10 s is longer than the run. Mutation tried: in
    ``kernels.arm_timer``, ``if True:`` for ``if now <= deadline:`` (never -ETIME): the 1 ns
    run fails on etime_rate 0.
    """
    for row in _timer_rows(tmp_path, "late.json", "0.001"):
        assert row["timer_sets"] > 120 and row["etime_rate"] == 1.0, row
        streak = config.PANIC_STREAK          # FreeBSD 10.4's: 59 -ETIME in a row
        assert row["worst_streak"] >= streak and row["panics"] == row["timer_sets"] // streak, row
    for row in _timer_rows(tmp_path, "early.json", "1e7"):
        assert row["timer_sets"] > 0 and row["etime_rate"] == 0.0, row
        assert row["worst_streak"] == 0 and row["panics"] == 0, row


def test_run_repeat_and_csv(tmp_path, exclusive, no_leftovers):
    c, js = tmp_path / "r.csv", tmp_path / "r.json"
    r = testbed_cli("run", "--variant", "lockless", "--vcpus", "1", *TINY, "--repeat", "2", "--csv", c, "--json", js)
    assert r.returncode == 0, r.stdout + r.stderr
    rows = list(csv.DictReader(c.open()))
    assert [row["seed"] for row in rows] == ["3", "4"]
    res = json.loads(js.read_text())
    jsonschema.validate(res, SCHEMA)
    assert res["kind"] == "testbed.repeat" and len(res["runs"]) == 2


@slow("four runs end to end (about 10 s)")
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


@slow("a stress run of every control and design (about 14 s)")
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
    """The stopped vCPU holds the lock, and the vCPUs queued behind it number at most vCPUs - 1.

    Before, the report could read "holds lock: False ... waiting for lock: 8" on 2 vCPUs and
    the test passed on the text. Mutation tried: ``Stressor._stop_a_holder`` returning after the
    first SIGSTOP, whoever it stopped: "holds lock: False".
    """
    js = tmp_path / "stop.json"
    r = testbed_cli("stress", "--variants", "locked", "--vcpus", "2", "--duration", "3", "--seed", "3", "--inject",
                    "stop", "--on-stall", "resume", "--json", js, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    line = next(x for x in r.stdout.splitlines() if x.startswith("locked: "))
    assert "made no progress" in line and "process status: stopped" in line and "holds lock: True" in line
    assert "resumed" in line
    (run,) = json.loads(js.read_text())["runs"]
    f = run["failure"]
    assert f["kind"] == "stalled" and f["holds_lock"] is True and f["lock_holder"] == f["vcpu"]
    assert 0 <= f["waiting_for_lock"] <= run["vcpus"] - 1
    assert run["stress"]["injected"]["vcpu"] == f["vcpu"] and f["action"] == "resumed"


def test_stress_stop_injection_on_stall_kill(tmp_path, exclusive, no_leftovers):
    """--on-stall kill: the stopped vCPU is killed, the run ends FAILURE, nothing is left behind.

    The harness kills a stalled vCPU at the stop whatever ``--on-stall`` says, so the exit status
    alone cannot tell the two actions apart (``Stressor.stall`` sending SIGCONT for both was tried
    and passes); the failure records the action. Mutation tried: ``failure["action"] = "resumed"``
    in ``Stressor.stall``: fails on the action.
    """
    js = tmp_path / "kill.json"
    r = testbed_cli("stress", "--variants", "lockless", "--vcpus", "2", "--duration", "2", "--seed", "5", "--inject",
                    "stop", "--on-stall", "kill", "--json", js, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    (run,) = json.loads(js.read_text())["runs"]
    f = run["failure"]
    assert f["kind"] == "stalled" and f["action"] == "killed" and "the vCPU was killed" in f["message"]
    assert run["verdict"] == "FAILURE" and run["stress"]["injected"]["fault"] == "stop"
    assert run["per_vcpu"][f["vcpu"]]["exitcode"] == -9 and not alive_pid(f["pid"])


def test_stress_kill_injection(tmp_path, exclusive, no_leftovers):
    """--inject kill: the watchdog names the killed vCPU and the signal; the result is partial.

    Mutation tried: ``_inject`` sending SIGTERM: the failure names SIGTERM and the test fails.
    """
    js = tmp_path / "k.json"
    r = testbed_cli("stress", "--variants", "lockless", "--vcpus", "2", "--duration", "2", "--seed", "3", "--inject",
                    "kill", "--json", js, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    (run,) = json.loads(js.read_text())["runs"]
    f, inj = run["failure"], run["stress"]["injected"]
    assert f["kind"] == "killed" and f["signal"] == "SIGKILL" and f["vcpu"] == inj["vcpu"]
    assert run["victims"] == {str(inj["vcpu"]): "killed"} and run["partial"] is True
    assert f"vCPU {inj['vcpu']} was killed by SIGKILL" in r.stdout


@slow("a scale of every lock (about 7 s)")
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


@slow("runs and diffs end to end (about 9 s)")
def test_diff_refuses_another_cpu_model_end_to_end(tmp_path, exclusive, no_leftovers):
    """Two real runs; one result edited to come from another CPU model: diff exits 2 naming it.

    Mutation tried: ``"cpu_model"`` dropped from ``results.HOST_KEYS``: diff exits 0.
    """
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    for path in (a, b):
        r = testbed_cli("run", "--variant", "lockless", "--vcpus", "1", "--duration", "0.2", "--warmup", "0",
                        "--frames", "256", "--quiet", "--json", path)
        assert r.returncode == 0, r.stderr
    res = json.loads(b.read_text())
    assert res["host"]["cpu_model"] == json.loads(a.read_text())["host"]["cpu_model"]
    assert testbed_cli("diff", a, b).returncode == 0
    res["host"]["cpu_model"] = "Some Other CPU @ 1.00GHz"
    b.write_text(json.dumps(res))
    r = testbed_cli("diff", a, b)
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1, r.stdout + r.stderr
    assert "cpu_model" in r.stderr and "Some Other CPU" in r.stderr and "--force" in r.stderr
    assert testbed_cli("diff", a, b, "--force").returncode == 0


@slow("compiles into a fresh kernel cache (about 20 s)")
def test_cache_dir_is_used_and_a_warm_run_measures_within_2_s(tmp_path, exclusive, no_leftovers):
    """$TESTBED_CACHE_DIR holds the compiled kernels; the next run loads them and measures within 2 s.

    The first run compiles into an empty $TESTBED_CACHE_DIR (tens of seconds on a busy host),
    which must then hold numba's index and code files; the second, from the same directory, must
    start measuring less than 2 s after the command started (``startup.since_launch_s``, best of
    3 on a shared host). Mutations tried: ``base = os.path.join(...)`` without
    ``os.environ.get("TESTBED_CACHE_DIR") or`` in ``testbed/__init__.py``: the directory stays
    empty; ``time.sleep(2)`` at the top of ``harness.compile_kernels``: warm runs measure after
    3.1 s. (The child's environment drops NUMBA_CACHE_DIR, which the parent's own ``import
    testbed`` may have set and which would take precedence.)
    """
    cache = tmp_path / "cache"
    cache.mkdir()
    env = {"NUMBA_CACHE_DIR": None, "TESTBED_CACHE_DIR": str(cache)}

    def run(name):
        js = tmp_path / name
        r = testbed_cli("run", "--variant", "lockless", "--vcpus", "2", "--duration", "0.3", "--warmup", "0",
                        "--frames", "256", "--quiet", "--json", js, timeout=600, env=env)
        assert r.returncode == 0, r.stdout + r.stderr
        return json.loads(js.read_text())["startup"]

    run("cold.json")
    (sub,) = list(cache.iterdir())
    assert sub.name.startswith("numba-")
    files = [f.suffix for f in sub.rglob("*")]
    assert files.count(".nbi") >= 1 and files.count(".nbc") >= 1, files
    starts = []
    for i in range(3):
        st = run(f"warm{i}.json")
        starts.append(st["since_launch_s"])
        if st["since_launch_s"] < 2.0:
            break
    assert min(starts) < 2.0, f"a warm run started measuring {starts} s after launch"


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
