"""The Slurm executor against a real single-node Slurm on this machine.

``scripts/slurm-local.sh start`` brings up munged, mariadbd + slurmdbd,
slurmctld and slurmd (as root, state under $TESTBED_SLURM_DIR); ``.ci/run``
starts it before the suite, and the fixture starts it itself when it is not
up (and stops what it started). Where it cannot start (not root, the Debian
packages missing, a daemon that will not come up) the test is skipped with
the reason, which ``pytest -ra`` prints.
"""

import csv
import json
import os
import shutil
import subprocess
import time

import pytest

from conftest import REPO, dead_owners, testbed_cli, testbed_segments

SCRIPT = REPO / "scripts" / "slurm-local.sh"
PLAN = """
variant = ["directmap", "lockless"]
vcpus = 2
duration = 1
warmup = 0
frames = 256
seed = 5
"""


def _script(*args, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout)


def _final_state(job: str, conf: str, timeout: float = 60.0) -> str:
    """The job's state in accounting once it has ended (the result can land while the step still exits)."""
    deadline = time.monotonic() + timeout
    while True:
        r = subprocess.run(["sacct", "-n", "-X", "-j", job, "-o", "State"], capture_output=True, text=True,
                           timeout=30, env={**os.environ, "SLURM_CONF": conf})
        state = " ".join(r.stdout.split())
        if state not in ("", "PENDING", "RUNNING", "COMPLETING") or time.monotonic() > deadline:
            return state
        time.sleep(0.5)


@pytest.fixture(scope="module")
def slurm():
    """SLURM_CONF of a running single-node Slurm, or a skip that says why there is none."""
    if os.geteuid() != 0:
        pytest.skip("the single-node Slurm of scripts/slurm-local.sh runs its daemons as root; run the tests as root")
    missing = [b for b in ("munged", "mariadbd", "slurmdbd", "slurmctld", "slurmd", "sbatch", "sacct")
               if shutil.which(b) is None and not os.path.exists(f"/usr/sbin/{b}")]
    if missing:
        pytest.skip(f"Slurm not installed ({', '.join(missing)} missing): run 'scripts/slurm-local.sh install' "
                    "(Debian packages slurm-wlm munge mariadb-server slurmdbd)")
    started = _script("status").returncode != 0
    if started:
        r = _script("start")
        if r.returncode != 0:
            _script("stop")
            tail = " | ".join(r.stderr.strip().splitlines()[-3:])
            pytest.skip(f"scripts/slurm-local.sh start failed: {tail}")
    conf = _script("env").stdout.strip().split("=", 1)[1]
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = conf
    try:
        yield conf
    finally:
        if old is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = old
        if started:
            _script("stop")


def test_a_two_cell_plan_runs_through_sbatch_and_the_report_merges_it(tmp_path, slurm, exclusive):
    """Two jobs, each --exclusive on the node, results back in DIR, report merges them; a second run
    submits nothing. Breaks if run_slurm dropped exclusive=True (no '#SBATCH --exclusive' in the jobs),
    or if the job wrote its result anywhere but DIR."""
    plan = tmp_path / "plan.toml"
    plan.write_text(PLAN)
    out = tmp_path / "out"
    before = testbed_segments()
    r = testbed_cli("sweep", plan, "--out", out, "--executor", "slurm", "--time", "5",
                    "--slurm-option", "comment=testbed-test", env={"SLURM_CONF": slurm}, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "2 cells (variant x2); 0 done, 0 failed, 2 to run on slurm" in r.stdout
    assert r.stdout.count(": Slurm job ") == 2 and "done 2, failed 0, left 0 of 2" in r.stdout, r.stdout

    results = [json.loads(p.read_text()) for p in sorted(out.glob("*.json"))]
    assert [(x["variant"], x["vcpus"], x["verdict"]) for x in results] == [("directmap", 2, "SUCCESS"),
                                                                           ("lockless", 2, "SUCCESS")]
    jobs = [x["sweep"]["slurm_job"] for x in results]
    assert all(x["sweep"]["executor"] == "slurm" for x in results) and all(jobs) and len(set(jobs)) == 2

    for job in jobs:
        script = (out / ".submitit" / job / f"{job}_submission.sh").read_text()
        assert "#SBATCH --exclusive" in script and "#SBATCH --comment=testbed-test" in script, script
        assert _final_state(job, slurm) == "COMPLETED"

    r = testbed_cli("report", out)
    assert r.returncode == 0, r.stdout + r.stderr
    rows = list(csv.DictReader((out / "report.csv").read_text().splitlines()))
    assert sorted(row["variant"] for row in rows) == ["directmap", "lockless"]
    assert all(row["host_hostname"] == results[0]["host"]["hostname"] for row in rows)
    assert list(out.glob("report-*-uniform.png"))

    r = testbed_cli("sweep", plan, "--out", out, "--executor", "slurm", env={"SLURM_CONF": slurm})
    assert r.returncode == 0 and "2 done, 0 failed, 0 to run" in r.stdout and "Slurm job" not in r.stdout, r.stdout
    assert not dead_owners(testbed_segments() - before)
