"""The ``testbed`` command line: bad input is refused before anything starts; a good run works."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap

import pytest

from conftest import (REPO, STARTED, clean_leftovers, cli_env, leftovers, segments_owned_by, set_subreaper, testbed_cli,
                      track)

# Runs ``python -m testbed`` exactly as ``-m`` does (runpy), but first logs every fork, every
# subprocess and every shared-memory segment created, to the file named by TB_SPAWN_LOG.
SPY = textwrap.dedent("""
    import os, runpy, subprocess, sys
    from multiprocessing import shared_memory

    _log = open(os.environ["TB_SPAWN_LOG"], "a", buffering=1)
    os.register_at_fork(before=lambda: _log.write("fork\\n"))
    _popen = subprocess.Popen.__init__
    def _spy_popen(self, *a, **k):
        _log.write("popen %r\\n" % (a[0] if a else k.get("args"),))
        return _popen(self, *a, **k)
    subprocess.Popen.__init__ = _spy_popen
    _shm = shared_memory.SharedMemory.__init__
    def _spy_shm(self, name=None, create=False, size=0, **k):
        if create:
            _log.write("shm %s\\n" % name)
        return _shm(self, name, create, size, **k)
    shared_memory.SharedMemory.__init__ = _spy_shm
    sys.argv[0] = "testbed"
    runpy.run_module("testbed", run_name="__main__", alter_sys=True)
""")


def spied_cli(tmp_path, *args, timeout: float = 120):
    """Run the CLI under the spy; (completed process, what it started)."""
    log = tmp_path / "spawned.log"
    log.write_text("")
    p = subprocess.Popen([sys.executable, "-c", SPY, *map(str, args)], cwd=tmp_path, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=cli_env({"TB_SPAWN_LOG": str(log)}))
    try:
        out, err = p.communicate(timeout=timeout)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    return subprocess.CompletedProcess(p.args, p.returncode, out, err), log.read_text().splitlines(), p.pid


QUICK = ("--duration", "0.5", "--warmup", "0", "--frames", "64")

# (arguments after "run", the option the message must name, the bad value it must quote, more words it must hold)
BAD = [
    (("--vcpus", "0"), "vcpus", "0", ()),
    (("--duration", "-1"), "duration", "-1", ()),
    (("--cpus", "99"), "cpus", "99", ()),
    (("--cpus", "0-1", "--vcpus", "3"), "vcpus", "3", ("--oversubscribe",)),
    (("--variant", "nosuch"), "variant", "nosuch", ()),
    (("--workload", "nosuch"), "workload", "nosuch", ()),
    (("--hash", "6"), "hash", "6", ()),
    (("--variant", "lockless", "--entries", "16"), "entries", "16", ("BUILD_BUG_ON", "invert")),
    (("--variant", "percpu", "--entries", "8"), "entries", "8", ("--unchecked",)),
    (("--variant", "kmap-local", "--entries", "8"), "entries", "8", ("--unchecked",)),
    (("--variant", "lockless", "--lock", "mcs"), "lock", "mcs", ("ticket, mcs, tas",)),
    (("--variant", "locked", "--lock", "nosuch"), "lock", "nosuch", ("ticket, mcs, tas",)),
    (("--irq-rate", "-5"), "irq-rate", "-5", ("between 0 (off) and",)),
    (("--irq-rate", "99999999999"), "irq-rate", "1e+11", ("between 0 (off) and", "cycle counter")),
    (("--irq-rate", "nan"), "irq-rate", "nan", ("finite",)),
    (("--variant", "kmap-local", "--irq-rate", "1000"), "entries", "16", ("interrupt handler", "17")),
    (("--json", "/nonexistent/dir/x.json"), "json", "/nonexistent/dir/x.json", ()),
    (("--json", "/tmp"), "json", "/tmp", ("is a folder",)),          # before: a traceback after the run
    (("--csv", "/proc/x.csv"), "csv", "/proc/x.csv", ("cannot take a new file",)),
    (("--variant", "lockd"), "variant", "lockd", ("did you mean 'locked'?",)),
    (("--duration", "5 parsecs"), "duration", "5 parsecs", ("10s, 500ms",)),
    (("--refcount-wrap", "saturate"), "refcount-wrap", "saturate", ("stop, wrap",)),
    (("--variant", "lockless", "--dom-layout", "xen"), "dom-layout", "xen", ("locked: xen, padded",)),
    (("--variant", "locked", "--dom-layout", "tight"), "dom-layout", "tight", ("xen, padded",)),
    (("--vcpus", "2", "--oversubscribe", "--domain-vcpus", "1"), "domain-vcpus", "1", ("below --vcpus 2",)),
    (("--domain-vcpus", "9000"), "domain-vcpus", "9000", ("MAX_VIRT_CPUS",)),
    (("--workload", "timers", "--sshot-future", "maybe"), "sshot-future", "maybe", ("honoured, ignored",)),
]


@pytest.mark.parametrize("args, option, value, words", BAD, ids=[" ".join(b[0]) for b in BAD])
def test_bad_input_exits_2_with_one_line_and_starts_nothing(tmp_path, args, option, value, words):
    if option == "cpus" and value == "99" and 99 in os.sched_getaffinity(0):
        pytest.skip("this host has a CPU 99")
    if args[:2] == ("--cpus", "0-1") and not {0, 1} <= os.sched_getaffinity(0):
        pytest.skip("needs CPUs 0 and 1")
    out, spawned, pid = spied_cli(tmp_path, "run", *QUICK, *args)
    assert out.returncode == 2, (out.returncode, out.stderr)
    lines = out.stderr.splitlines()
    assert len(lines) == 1, out.stderr
    line = lines[0]
    assert value in line, line
    # The option is named in the message itself, not only inside the value it was given.
    assert re.search(rf"(^|[^\w-])(--)?{option}\b", line.replace(value, "<value>")), (
        f"message does not name --{option}: {line!r}")
    for w in words:
        assert w in line, (w, line)
    assert "Traceback" not in out.stderr
    assert spawned == [], f"bad input started {spawned}"
    assert not segments_owned_by(pid)
    assert not (tmp_path / "x.json").exists()


def test_spy_sees_what_a_good_run_starts(tmp_path, exclusive, warm_kernels, no_leftovers):
    """The check above can fail: the same spy sees a real run's forks and its segment."""
    out, spawned, pid = spied_cli(tmp_path, "run", "--variant", "directmap", "--vcpus", "2", "--quiet", *QUICK)
    assert out.returncode == 0, out.stderr
    assert spawned.count("fork") >= 2
    assert [s for s in spawned if s.startswith("shm testbed_")] != []
    assert not segments_owned_by(pid)


def test_good_run_writes_json(tmp_path, exclusive, warm_kernels, no_leftovers):
    out = testbed_cli("run", "--variant", "directmap", "--vcpus", "2", "--duration", "1", "--warmup", "0",
                      "--json", "out.json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "verdict: SUCCESS" in out.stdout
    res = json.loads((tmp_path / "out.json").read_text())
    assert res["verdict"] == "SUCCESS"
    assert res["variant"] == "directmap" and res["vcpus"] == 2
    assert res["checks"]["violations"] == 0 and res["failure"] is None and res["interrupted"] is None
    assert res["totals"]["ops"] > 0
    assert 0.8 < res["totals"]["measured_s"] < 3.0


def test_variants_lists_real_ones_and_negative_controls():
    out = testbed_cli("variants", timeout=60)
    assert out.returncode == 0, out.stderr
    names = [line.split()[0] for line in out.stdout.splitlines() if line.strip()]
    for name in ("directmap", "locked", "lockless", "percpu", "kmap-local", "locked-nolock", "locked-noflush",
                 "lockless-noflush", "percpu-noflush", "percpu-eager", "kmap-local-noflush"):
        assert name in names, (name, out.stdout)
    assert sum("negative control" in line for line in out.stdout.splitlines()) >= 6


def test_variants_json_lists_every_variant_and_control_with_its_check():
    """A control's entry names the checks that must catch it and the options it needs to show its fault."""
    from testbed import variants as registry
    from testbed.oracle import CHECK_KEYS

    out = testbed_cli("variants", "--json", timeout=60)
    assert out.returncode == 0, out.stderr
    table = json.loads(out.stdout)
    assert [d["name"] for d in table] == list(registry.VARIANTS)
    for d in table:
        assert d["kind"] in ("real", "control", "xen") and d["description"]
        assert "\n" not in d["description"]
        if d["kind"] == "control":
            assert d["caught_by"] and set(d["caught_by"]) <= set(CHECK_KEYS), d
            assert isinstance(d["options"], list)
    by_name = {d["name"]: d for d in table}
    assert {d["name"] for d in table if d["kind"] == "real"} == {v.name for v in registry.REAL}
    assert by_name["lockless-wrap"]["options"] == ["--workload", "nest-same", "--nest", "256", "--refcount-wrap",
                                                   "wrap"]
    assert by_name["locked-garbage-pte"]["options"] == []


def test_help_works():
    out = subprocess.run([sys.executable, "-m", "testbed", "--help"], cwd=REPO, capture_output=True, text=True,
                         timeout=60, env=cli_env())
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("usage: testbed")
    for cmd in ("run", "variants", "cleanup"):
        assert cmd in out.stdout
    assert out.stderr == ""


# A CLI-like child: creates a segment named after itself, forks a grandchild that outlives it, exits.
LEAKER = textwrap.dedent("""
    import os, sys, time
    open(f"/dev/shm/testbed_{os.getpid()}_0badc0de", "w").close()
    if os.fork() == 0:
        time.sleep(60)
        os._exit(0)
    os._exit(0)
""")


def test_no_leftovers_sees_what_a_cli_process_left(exclusive):
    """The fixture's check fails for a command-line child's segment and for its orphaned child.

    Before this test the fixture looked only at segments named after the pytest
    process and at its live children, so a CLI that left its arena or a vCPU
    behind passed. Mutation tried: ``owners = {os.getpid()}`` in
    ``conftest.leftovers`` (the old check): the segment is no longer found.
    """
    import psutil

    before = {p.pid for p in psutil.Process().children(recursive=True)}
    since = len(STARTED)
    reaper = set_subreaper(True)
    try:
        p = subprocess.Popen([sys.executable, "-c", LEAKER])
        track(p.pid)
        p.wait(30)
        extra, segs = leftovers(before, since, wait_s=0.5)
        assert segs == {f"testbed_{p.pid}_0badc0de"}
        if reaper:              # the orphan is ours to see only as a subreaper
            assert len(extra) == 1 and extra[0].ppid() == os.getpid()
    finally:
        if reaper:
            set_subreaper(False)
        extra, segs = leftovers(before, since, wait_s=0)
        clean_leftovers(extra, segs | {f"testbed_{pid}_0badc0de" for pid in STARTED[since:]})
    assert leftovers(before, since, wait_s=0) == ([], set())
