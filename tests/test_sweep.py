"""testbed sweep and testbed report: plans, bad input, and the local executor end to end.

Mutations that these tests catch are named in each docstring ("breaks if ...").
"""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import pytest

from conftest import REPO, LineReader, cli_env, dead_owners, slow, testbed_cli, testbed_segments, track
from testbed import cli, sweepexec, sweepplan, sweepstore

SCHEMA = json.loads((REPO / "testbed" / "schema.json").read_text())
SMALL = """
variant = ["directmap", "lockless"]
vcpus = [1, 2]
duration = 1
warmup = 0
frames = 256
seed = 3
"""


def plan_file(tmp_path, text: str, name: str = "plan.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# --- the plan ----------------------------------------------------------------------------


def test_plan_expands_to_the_grid_repetitions_outermost(tmp_path):
    """Breaks if repeat were innermost, or a repetition reused the seed."""
    plan = sweepplan.load_plan(str(plan_file(tmp_path, SMALL + "repeat = 2\n")))
    assert len(plan.cells) == 8
    assert [(c.options["variant"], c.options["vcpus"], c.options["seed"]) for c in plan.cells[:5]] == [
        ("directmap", 1, 3), ("directmap", 2, 3), ("lockless", 1, 3), ("lockless", 2, 3), ("directmap", 1, 4)]
    assert plan.axes == ("variant", "vcpus", "seed")
    assert len({c.cell_id for c in plan.cells}) == 8 and len({c.name for c in plan.cells}) == 8
    assert plan.cells[0].name.startswith("variant-directmap_vcpus-1_seed-3-")


def test_cell_ids_belong_to_the_options_not_to_the_plan(tmp_path):
    """A cell keeps its id when the plan around it grows or is reordered, or spells a key the other way;
    it gets a new one when any of its own options changes. Breaks if the id hashed the cell's index or the
    plan's text, or left out the fixed options."""
    def ids(text):
        return {c.cell_id for c in sweepplan.load_plan(str(plan_file(tmp_path, text))).cells}

    base = ids(SMALL)
    grown = ids(SMALL.replace('["directmap", "lockless"]', '["lockless", "locked", "directmap"]'))
    assert base < grown and len(grown - base) == 2
    assert ids(SMALL + "working-set = 128\n") == ids(SMALL + "working_set = 128\n")
    assert not ids(SMALL.replace("duration = 1", "duration = 2")) & base
    assert ids(SMALL.replace("duration = 1\n", "duration = 1.0\n")) == base      # the same option value
    assert ids(SMALL + "tlb-ways = 4\n") == base           # the default, spelled out


def test_the_default_seed_is_fixed_so_that_a_plan_finds_its_cells_again(tmp_path):
    """Breaks if a plan without a seed drew one from the clock (config_from's default for 'testbed run')."""
    text = SMALL.replace("seed = 3\n", "")
    first = sweepplan.load_plan(str(plan_file(tmp_path, text)))
    time.sleep(0.01)
    again = sweepplan.load_plan(str(plan_file(tmp_path, text)))
    assert [c.cell_id for c in first.cells] == [c.cell_id for c in again.cells]
    assert all(c.options["seed"] == sweepplan.DEFAULT_SEED for c in first.cells)


# --- bad input: exit 2, one line naming the file, the key and the problem, nothing started ------


BAD = [
    ("not TOML", "variant = [directmap\n", ["not TOML"]),
    ("unknown option", SMALL + "speed = 3\n", ["key 'speed'", "unknown option"]),
    ("empty list", SMALL.replace('["directmap", "lockless"]', "[]"), ["key 'variant'", "empty list"]),
    ("wrong type", SMALL + 'tlb-ways = "four"\n', ["key 'tlb-ways'", "not an integer"]),
    ("flag not a bool", SMALL + "oversubscribe = 1\n", ["key 'oversubscribe'", "not true or false"]),
    ("bool for a number", SMALL + "hot-set = true\n", ["key 'hot-set'", "not a number"]),
    ("a table", SMALL + "[slurm]\npartition = 'x'\n", ["key 'slurm'"]),
    ("repeat 0", SMALL + "repeat = 0\n", ["key 'repeat'"]),
    ("one cell fails validation", SMALL.replace("vcpus = [1, 2]", "vcpus = [1, 0]"), ["cell 2", "--vcpus 0"]),
    ("unknown variant in one cell", SMALL.replace('"lockless"]', '"lockles"]'), ["cell 3", "lockles"]),
    ("placement", SMALL.replace("vcpus = [1, 2]", "vcpus = [1, 4096]"), ["--vcpus", "cell 2"]),
    ("same option twice", SMALL + "working-set = 8\nworking_set = 8\n", ["key 'working_set'", "same option"]),
]


@pytest.mark.parametrize("what,text,needles", BAD, ids=[b[0] for b in BAD])
def test_bad_plans_exit_2_with_one_line_and_start_nothing(tmp_path, capsys, what, text, needles):
    """Breaks if any cell started before every cell was checked (the out folder would exist), or the
    message lost the file or key (e.g. load_plan raising the bare argparse message)."""
    plan = plan_file(tmp_path, text)
    out = tmp_path / "out"
    rc = cli.main(["sweep", str(plan), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.count("\n") == 1 and str(plan) in err, err
    for needle in needles:
        assert needle in err, (needle, err)
    assert not out.exists()


def test_slurm_without_sbatch_exits_2_before_reading_the_plan(tmp_path):
    """Breaks if main() checked for sbatch only when submitting (after validation, or never)."""
    plan = plan_file(tmp_path, SMALL)
    r = testbed_cli("sweep", plan, "--out", tmp_path / "out", "--executor", "slurm",
                    env={"PATH": str(tmp_path)})
    assert r.returncode == 2 and "sbatch not found" in r.stderr and "--executor slurm" in r.stderr, r.stderr
    assert r.stderr.count("\n") == 1 and not (tmp_path / "out").exists()


def test_slurm_options_are_checked(tmp_path, capsys):
    """Breaks if slurm_options accepted a pair without '='."""
    with pytest.raises(cli.UsageError, match="KEY=VALUE"):
        sweepexec.slurm_options(["account"])
    assert sweepexec.slurm_options(["mail-type=END", "account=lab"]) == {"mail_type": "END", "account": "lab"}
    with pytest.raises(cli.UsageError, match="--time"):
        sweepexec._slurm_time("soon", [])
    rc = cli.main(["sweep", str(plan_file(tmp_path, SMALL)), "--out", str(tmp_path / "o"), "--time", "5"])
    assert rc == 2 and "--executor slurm" in capsys.readouterr().err


def test_report_of_a_folder_without_results_exits_2(tmp_path, capsys):
    (tmp_path / "junk.json").write_text("{\"kind\": \"other\"}")
    assert cli.main(["report", str(tmp_path)]) == 2
    assert "no testbed run results" in capsys.readouterr().err
    assert cli.main(["report", str(tmp_path / "missing")]) == 2


# --- the local executor end to end ----------------------------------------------------------


def _results(out: Path) -> dict:
    return {p.name: json.loads(p.read_text()) for p in sorted(out.glob("*.json"))}


@slow("a sweep resumed, corrupted and retried end to end (about 16 s)")
def test_local_sweep_resume_corruption_retry_and_report(tmp_path, exclusive, no_leftovers):
    """Every cell's JSON, the merged CSV and plot, a second run that starts nothing, a corrupted result
    run again, a FAILURE skipped unless --retry-failed. Breaks if read_complete accepted a truncated file
    (the corrupted cell would be skipped), if the report averaged vCPU counts or lost linear, or if the
    skip looked only at the file name."""
    plan = plan_file(tmp_path, SMALL)
    out = tmp_path / "out"
    r = testbed_cli("sweep", plan, "--out", out, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "4 cells (variant x2, vcpus x2); 0 done, 0 failed, 4 to run on local" in r.stdout
    assert "done 4, failed 0, left 0 of 4" in r.stdout
    res = _results(out)
    assert len(res) == 4
    cells = {c.cell_id: c for c in sweepplan.load_plan(str(plan)).cells}
    for name, data in res.items():
        jsonschema.validate(data, SCHEMA)
        cell = cells[data["sweep"]["cell"]]
        assert name == f"{cell.name}.json" and data["verdict"] == "SUCCESS"
        assert (data["variant"], data["vcpus"], data["seed"]) == (cell.options["variant"], cell.options["vcpus"], 3)
        assert data["config"]["duration"] == 1.0 and data["config"]["warmup"] == 0.0
        assert data["sweep"]["executor"] == "local" and data["host"]["hostname"]
    assert not list(out.glob(".*tmp*"))

    r = testbed_cli("report", out)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "from 1 host" in r.stdout
    rows = list(csv.DictReader((out / "report.csv").read_text().splitlines()))
    assert len(rows) == 4
    for col in ("host_hostname", "host_cpu_model", "host_physical_cores", "frames", "tlb_ways", "cost_walk",
                "variant", "vcpus", "ops_per_s", "linear", "efficiency", "p99_cycles", "verdict"):
        assert col in rows[0], col
    by = {(row["variant"], row["vcpus"]): row for row in rows}
    for v in ("directmap", "lockless"):
        one = float(by[(v, "1")]["ops_per_s"])
        assert float(by[(v, "2")]["linear"]) == pytest.approx(2 * one, rel=1e-3)
        assert float(by[(v, "2")]["efficiency"]) == pytest.approx(float(by[(v, "2")]["ops_per_s"]) / (2 * one),
                                                                 rel=1e-3)
    pngs = list(out.glob("report-*-uniform.png"))
    assert len(pngs) == 1 and pngs[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and pngs[0].stat().st_size > 10_000

    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("variant-*.json")}
    r = testbed_cli("sweep", plan, "--out", out)
    assert r.returncode == 0 and "4 done, 0 failed, 0 to run" in r.stdout and "[" not in r.stdout, r.stdout
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("variant-*.json")} == stamps

    victim = sorted(stamps)[1]
    text = (out / victim).read_text()
    (out / victim).write_text(text[: len(text) // 2])          # a write cut short
    r = testbed_cli("sweep", plan, "--out", out, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "3 done, 0 failed, 1 to run" in r.stdout and r.stdout.count("] variant=") == 1
    assert json.loads((out / victim).read_text())["verdict"] == "SUCCESS"

    other = sorted(stamps)[2]
    data = json.loads((out / other).read_text())
    data["verdict"] = "FAILURE"                               # as a negative control would end
    (out / other).write_text(json.dumps(data))
    r = testbed_cli("sweep", plan, "--out", out)
    assert r.returncode == 1 and "3 done, 1 failed" in r.stdout and "--retry-failed" in r.stdout, r.stdout
    r = testbed_cli("sweep", plan, "--out", out, "--retry-failed", timeout=120)
    assert r.returncode == 0 and "1 failed (to retry), 1 to run" in r.stdout, r.stdout
    assert json.loads((out / other).read_text())["verdict"] == "SUCCESS"


def test_a_changed_plan_runs_only_its_new_cells(tmp_path, exclusive, no_leftovers):
    """Breaks if the cell id depended on the plan's other cells (every cell would run again)."""
    base = "variant = [\"directmap\"]\nvcpus = 1\nduration = 0.5\nwarmup = 0\nframes = 256\n"
    out = tmp_path / "out"
    r = testbed_cli("sweep", plan_file(tmp_path, base), "--out", out, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    grown = base.replace('["directmap"]', '["directmap", "locked"]')
    r = testbed_cli("sweep", plan_file(tmp_path, grown), "--out", out, timeout=120)
    assert r.returncode == 0 and "1 done, 0 failed, 1 to run" in r.stdout, r.stdout
    assert "variant=locked" in r.stdout and "variant=directmap ..." not in r.stdout
    assert len(list(out.glob("*.json"))) == 2


@slow("a sweep interrupted and resumed (about 10 s)")
def test_an_interrupted_sweep_loses_at_most_the_cell_in_progress(tmp_path, exclusive, no_leftovers):
    """SIGINT during the second cell: exit 130, the first cell's result kept, no partial file, and the next
    run does the two cells left. Breaks if run_cell wrote an interrupted run's result, or if write_atomic
    wrote in place."""
    plan = plan_file(tmp_path, "variant = \"directmap\"\nvcpus = 1\nseed = [1, 2, 3]\nduration = 2\n"
                               "warmup = 0\nframes = 256\n")
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "testbed", "sweep", str(plan), "--out", str(out)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=cli_env())
    track(proc.pid)
    try:
        lines = LineReader(proc.stdout)
        assert lines.wait_for(lambda s: s.startswith("[2/3]"), timeout=120), lines.text()
        time.sleep(0.8)                                        # inside the second cell's measured window
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 130, lines.text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = lines.text()
    proc.stdout.close()
    assert "cell 2 (seed=2) lost" in text, text
    assert [json.loads(p.read_text())["seed"] for p in sorted(out.glob("*.json"))] == [1]
    assert not list(out.glob(".*tmp*"))
    r = testbed_cli("sweep", plan, "--out", out, timeout=120)
    assert r.returncode == 0 and "1 done, 0 failed, 2 to run" in r.stdout, r.stdout
    assert sorted(json.loads(p.read_text())["seed"] for p in out.glob("*.json")) == [1, 2, 3]


def test_write_atomic_leaves_the_old_file_when_the_write_fails(tmp_path):
    """Breaks if write_atomic opened the target itself (a failed dump would truncate the old result)."""
    path = tmp_path / "r.json"
    sweepstore.write_atomic({"a": 1}, path)
    with pytest.raises(TypeError):
        sweepstore.write_atomic({"a": object()}, path)
    assert json.loads(path.read_text()) == {"a": 1} and os.listdir(tmp_path) == ["r.json"]


def test_report_keeps_hosts_apart(tmp_path):
    """Two hosts with the same options: two plots, rows keep their own host, linear from their own host.
    Breaks if the report's groups left the host out (linear would mix the hosts' one-vCPU points)."""
    from testbed import report

    def run(host, vcpus, rate):
        return {"schema": 1, "kind": "testbed.run", "variant": "locked", "vcpus": vcpus, "seed": 1,
                "workload": "uniform", "config": {"variant": "locked", "vcpus": vcpus, "seed": 1,
                                                   "workload": "uniform"},
                "host": {"hostname": host, "cpu_model": "cpu", "physical_cores": 4, "logical_cpus": 4,
                         "kernel": "k", "packages": {}},
                "totals": {"ops": 1, "ops_per_s": rate, "measured_s": 1.0, "lock_contended": 0,
                           "hash_hit_rate": 0.0, "tlb_misses": 0},
                "latency": {"p50": 2, "p99": 4, "max": 8}, "checks": {"violations": 0},
                "fairness": {"starvation": False}, "partial": False, "verdict": "SUCCESS", "_file": host}

    runs = [run("a", 1, 100.0), run("a", 2, 150.0), run("b", 1, 1000.0), run("b", 2, 1900.0)]
    rows = {(r["host_hostname"], r["vcpus"]): r for r in report.rows(runs, [])}
    assert rows[("a", 2)]["linear"] == 200.0 and rows[("b", 2)]["linear"] == 2000.0
    groups = report.plot_groups(runs)
    assert sorted(k[0][0] for k in groups) == ["a", "b"]
    assert all(len(g["rows"]) == 2 for g in groups.values())


def test_report_scales_over_the_default_domain_and_keeps_a_fixed_one_apart():
    """The default domain has as many vCPUs as run (recorded resolved, domain_vcpus == vcpus), so a vCPU
    sweep is one group; a fixed --domain-vcpus is a group of its own. Breaks if the grouping compared the
    recorded domain_vcpus as it is (a default sweep would lose linear) or ignored it (a 32-vCPU domain's
    point would be scaled against a one-vCPU domain's)."""
    from testbed import report

    def run(vcpus, domain, rate):
        cfg = {"variant": "locked", "vcpus": vcpus, "domain_vcpus": domain, "seed": vcpus, "workload": "uniform"}
        return {"schema": 1, "kind": "testbed.run", "variant": "locked", "vcpus": vcpus, "seed": vcpus,
                "workload": "uniform", "config": cfg,
                "host": {"hostname": "h", "cpu_model": "cpu", "physical_cores": 4, "logical_cpus": 4,
                         "kernel": "k", "packages": {}},
                "totals": {"ops": 1, "ops_per_s": rate, "measured_s": 1.0, "lock_contended": 0,
                           "hash_hit_rate": 0.0, "tlb_misses": 0},
                "latency": {"p50": 2, "p99": 4, "max": 8}, "checks": {"violations": 0},
                "fairness": {"starvation": False}, "partial": False, "verdict": "SUCCESS", "_file": f"{vcpus}-{domain}"}

    default = report.rows([run(1, 1, 100.0), run(2, 2, 150.0)], [])
    assert [r["linear"] for r in default] == [100.0, 200.0]
    fixed = report.rows([run(1, 32, 100.0), run(2, 32, 150.0)], [])
    assert [r["linear"] for r in fixed] == [100.0, 200.0]
    mixed = report.rows([run(1, 1, 100.0), run(2, 32, 150.0)], [])
    assert [r["linear"] for r in mixed] == [None, None]
    assert len(report.plot_groups([run(1, 1, 100.0), run(2, 2, 150.0)])[("h", "cpu", 4, 4, "k"), "uniform"]["rows"]) == 2


def test_no_segments_left_by_a_sweep(tmp_path, exclusive):
    """A sweep runs through harness.run, which unlinks its segment; nothing of ours stays in /dev/shm."""
    before = testbed_segments()
    r = testbed_cli("sweep", plan_file(tmp_path, "vcpus = 1\nduration = 0.3\nwarmup = 0\nframes = 64\n"),
                    "--out", tmp_path / "o", timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert not dead_owners(testbed_segments() - before)


def test_a_cell_without_result_is_failed_and_reported_as_error(tmp_path, capsys):
    """A failure record (what a cell that raised, or a Slurm job that died, leaves) makes the cell 'failed',
    a whole result for the cell supersedes it, and the report shows it as an ERROR row with its options.
    Breaks if cell_state ignored failure records (the cell would run again without --retry-failed)."""
    plan = sweepplan.load_plan(str(plan_file(tmp_path, SMALL)))
    cell = plan.cells[1]
    out = tmp_path / "out"
    out.mkdir()
    assert sweepstore.cell_state(out, cell) == "todo"
    sweepstore.record_failure(out, cell, plan.path, "RuntimeError: node lost", slurm_job="17")
    assert sweepstore.cell_state(out, cell) == "failed"
    assert cli.main(["report", str(out)]) == 0
    rows = list(csv.DictReader((out / "report.csv").read_text().splitlines()))
    assert [(r["verdict"], r["variant"], r["vcpus"], r["error"]) for r in rows] == [
        ("ERROR", "directmap", "2", "RuntimeError: node lost")]
    assert "1 failed cells" in capsys.readouterr().out
