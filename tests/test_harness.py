"""testbed.harness: a run's result, and that every way a run can end leaves nothing behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import psutil
import pytest

import testbed.shared as shared
from testbed import harness, watchdog
from testbed.config import RunConfig

from conftest import (LineReader, alive, cli_env, kill_pids, segments_owned_by, testbed_cli, track, unlink_segments,
                      wait_gone)

pytestmark = pytest.mark.usefixtures("exclusive", "warm_kernels", "no_leftovers")

SMALL = dict(variant="directmap", vcpus=2, warmup=0, frames=64, seed=1)


def small(**kw) -> RunConfig:
    return RunConfig(**{**SMALL, "duration": 0.5, **kw})


def _children() -> list[psutil.Process]:
    return psutil.Process().children(recursive=True)


# --- a successful run -------------------------------------------------------------------------


def test_directmap_two_vcpus_succeeds_with_a_complete_result():
    old_term = signal.getsignal(signal.SIGTERM)
    r = harness.run(small())
    assert r["verdict"] == "SUCCESS", r["failure"]
    assert r["failure"] is None and r["interrupted"] is None
    for key in ("schema", "variant", "vcpus", "seed", "config", "host", "totals", "per_vcpu", "checks",
                "verdict", "startup"):
        assert key in r, key
    assert r["variant"] == "directmap" and r["vcpus"] == 2 and r["seed"] == 1
    assert r["config"]["duration"] == 0.5 and r["config"]["frames"] == 64
    for key in ("cpu_model", "logical_cpus", "physical_cores", "kernel", "python", "packages", "git_revision"):
        assert key in r["host"], key
    assert r["host"]["python"] == sys.version.split()[0]
    assert "numba" in r["host"]["packages"]
    # every check is zero, and they add up to violations
    assert r["checks"]["lost_writes"] == 0 and r["checks"]["violations"] == 0
    assert all(v == 0 for v in r["checks"].values()), r["checks"]
    t = r["totals"]
    assert t["ops"] > 0 and t["ops_per_s"] > 0
    assert t["writes"] > 0
    assert t["writes_counted_in_frames"] == t["writes"]          # frame counters add up to the writes
    per = r["per_vcpu"]
    assert len(per) == 2
    for d in per:
        assert d["ops"] > 0
        assert d["involuntary_ctx_switches"] >= 0
    cores = [d["core"] for d in per]
    assert len(set(cores)) == 2 and set(cores) <= os.sched_getaffinity(0)
    assert sum(d["ops"] for d in per) == t["ops"]
    assert r["startup"]["total_s"] > 0
    json.dumps(r)                                                # plain data
    assert signal.getsignal(signal.SIGTERM) == old_term          # the harness put the handler back
    assert _children() == []
    assert not segments_owned_by(os.getpid())


# --- failures inside the run: a worker killed or stopped, an exception -----------------------


def _measuring(monkeypatch) -> threading.Event:
    """An event set when the harness starts measuring (the vCPUs have been released)."""
    started = threading.Event()
    real = harness._measure

    def measure(*a, **k):
        started.set()
        return real(*a, **k)

    monkeypatch.setattr(harness, "_measure", measure)
    return started


def _hit_one_vcpu(started: threading.Event, sig: int, box: dict) -> threading.Thread:
    """Once measuring, send ``sig`` to one vCPU process; its pid and the time go in ``box``."""

    def go():
        if not started.wait(120):
            return
        time.sleep(0.3)
        kids = _children()
        if len(kids) != 2:
            box["error"] = f"expected 2 vCPU processes, found {kids}"
            return
        box["pid"] = kids[-1].pid
        box["t"] = time.monotonic()
        os.kill(kids[-1].pid, sig)

    th = threading.Thread(target=go, daemon=True)
    th.start()
    return th


def _vcpu_of(r: dict, pid: int) -> int:
    return [d["vcpu"] for d in r["per_vcpu"] if d["pid"] == pid][0]


def test_worker_killed_mid_run_is_reported_at_once(monkeypatch):
    started = _measuring(monkeypatch)
    box: dict = {}
    th = _hit_one_vcpu(started, signal.SIGKILL, box)
    r = harness.run(small(duration=20))
    done = time.monotonic()
    th.join(5)
    assert "error" not in box and "pid" in box, box
    assert done - box["t"] < 2.0, f"run ended {done - box['t']:.2f} s after the kill"
    assert r["verdict"] == "FAILURE"
    f = r["failure"]
    v = _vcpu_of(r, box["pid"])
    assert f["kind"] == "killed" and f["vcpu"] == v and f.get("signal") == "SIGKILL", f
    assert f"vCPU {v}" in f["message"]
    assert r["checks"]["worker_failures"] == 1
    assert r["partial"] is True
    assert not alive(box["pid"])
    assert _children() == [] and not segments_owned_by(os.getpid())


def test_stalled_worker_is_reported_and_the_run_ends(monkeypatch):
    started = _measuring(monkeypatch)
    box: dict = {}
    th = _hit_one_vcpu(started, signal.SIGSTOP, box)
    try:
        r = harness.run(small(duration=20))
    finally:
        if "pid" in box:                       # never leave a stopped process behind
            kill_pids([box["pid"]])
    done = time.monotonic()
    th.join(5)
    assert "error" not in box and "pid" in box, box
    f = r["failure"]
    v = _vcpu_of(r, box["pid"])
    assert f is not None and f["kind"] == "stalled" and f["vcpu"] == v and f["pid"] == box["pid"], f
    assert r["verdict"] == "FAILURE" and r["checks"]["worker_failures"] == 1
    # The watchdog gives a vCPU STALL_S (1 s) without progress; a stopped process cannot exit
    # by itself, so once it is found the run must not wait on it any longer.
    assert done - box["t"] < watchdog.STALL_S + 1.5, (
        f"run ended {done - box['t']:.2f} s after SIGSTOP (stall reported at t={f.get('t')})")
    assert _children() == [] and not segments_owned_by(os.getpid())


def test_exception_inside_the_run_cleans_up(monkeypatch):
    seen = {}

    def boom(state, procs, views, *a, **k):
        seen["pids"] = [p.pid for p in procs]
        seen["alive"] = [alive(p) for p in seen["pids"]]
        seen["segments"] = segments_owned_by(os.getpid())
        raise RuntimeError("boom in the middle of a run")

    monkeypatch.setattr(harness, "_measure", boom)
    old_term = signal.getsignal(signal.SIGTERM)
    with pytest.raises(RuntimeError, match="boom"):
        harness.run(small())
    assert len(seen["pids"]) == 2 and all(seen["alive"]) and len(seen["segments"]) == 1
    assert wait_gone(seen["pids"], 1.0) == []
    assert _children() == []
    assert not segments_owned_by(os.getpid())
    assert signal.getsignal(signal.SIGTERM) == old_term


def test_exception_in_the_sample_callback_cleans_up():
    def on_sample(sample, cfg):
        raise ValueError("callback failed")

    with pytest.raises(ValueError, match="callback failed"):
        harness.run(small(), on_sample=on_sample)
    assert _children() == []
    assert not segments_owned_by(os.getpid())


# --- the command line interrupted, or killed --------------------------------------------------


class CliRun:
    """``python -m testbed run ...`` in the background, its output read line by line."""

    def __init__(self, *args, cwd):
        self.p = subprocess.Popen([sys.executable, "-m", "testbed", "run", *map(str, args)], cwd=cwd,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env())
        track(self.p.pid)
        self.out = LineReader(self.p.stdout)
        self.err = LineReader(self.p.stderr)

    def wait_first_sample(self, timeout: float = 120) -> list[int]:
        """Wait for the first per-second line; the pids of the vCPU processes."""
        line = self.out.wait_for(lambda s: s.lstrip().startswith("t="), timeout)
        assert line is not None, f"no sample line; stdout {self.out.text(0)!r} stderr {self.err.text(0)!r}"
        kids = psutil.Process(self.p.pid).children(recursive=True)
        assert len(kids) == 2, kids
        return [k.pid for k in kids]

    def close(self, vcpus=()):
        if self.p.poll() is None:
            kill_pids([self.p.pid, *vcpus])
        else:
            kill_pids(vcpus)
        self.p.wait(10)
        unlink_segments(segments_owned_by(self.p.pid))


@pytest.mark.parametrize("sig, code, name", [(signal.SIGTERM, 143, "SIGTERM"), (signal.SIGINT, 130, "SIGINT")],
                         ids=["SIGTERM", "SIGINT"])
def test_signal_stops_the_run_with_partial_results(tmp_path, sig, code, name):
    out = tmp_path / "out.json"
    run = CliRun("--variant", "directmap", "--vcpus", "2", "--duration", "30", "--json", out, cwd=tmp_path)
    vcpus = []
    try:
        vcpus = run.wait_first_sample()
        assert segments_owned_by(run.p.pid)            # the run's segment, named by its owner
        t_sig = time.monotonic()
        run.p.send_signal(sig)
        rc = run.p.wait(20)
        took = time.monotonic() - t_sig
        assert rc == code, (rc, run.err.text())
        assert took < 10, took
        res = json.loads(out.read_text())
        assert res["interrupted"] == name
        assert res["partial"] is True and res["verdict"] == "FAILURE"
        assert res["samples"], "the samples taken before the signal are kept"
        assert wait_gone(vcpus, 5.0) == []
        assert not segments_owned_by(run.p.pid)
    finally:
        run.close(vcpus)


def test_parent_killed_children_follow_and_cleanup_reclaims_the_segment(tmp_path):
    run = CliRun("--variant", "directmap", "--vcpus", "2", "--duration", "30", cwd=tmp_path)
    vcpus = []
    segs = set()
    try:
        vcpus = run.wait_first_sample()
        run.p.send_signal(signal.SIGKILL)
        assert run.p.wait(10) == -signal.SIGKILL
        assert wait_gone(vcpus, 5.0) == [], "vCPU processes outlived their parent (PR_SET_PDEATHSIG)"
        segs = segments_owned_by(run.p.pid)
        assert len(segs) == 1, segs                   # nobody could unlink it
        name = segs.pop()
        segs.add(name)
        assert name in shared.stale_segments()
        out = testbed_cli("cleanup", timeout=60)
        assert out.returncode == 0, out.stderr
        assert f"removed stale segment /dev/shm/{name}" in out.stdout
        assert not segments_owned_by(run.p.pid)
    finally:
        run.close(vcpus)
        unlink_segments(segs)
