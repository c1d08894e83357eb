"""The command line's output: nothing lost, one closing verdict, 100 columns, diff of every kind,
intervals before claims, and the small habits (--version, did you mean, units, help).

Most tests run ``cli.main`` in this process with ``harness.run`` replaced by a fake that
returns a recorded run (tests/data/run-locked.json, a real 2-vCPU run of locked) with the
variant, vCPUs, seed and ops/s of the config it is given: the commands, experiments,
findings and files are the real ones, and nothing compiles or forks. The few that need a
real process say so.
"""

from __future__ import annotations

import copy
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, cli_env

from testbed import abi, cli, harness, latwatch, output, plots, stats

TEMPLATE = json.loads((Path(__file__).parent / "data" / "run-locked.json").read_text())
for _name in abi.COUNTER_NAMES.values():          # counters added since the run was recorded
    TEMPLATE["totals"].setdefault(_name, 0)

# ops/s of the fake runs: (variant, vCPUs) -> rate; locked collapses on 2 vCPUs
RATES = {("directmap", 1): 2.0e7, ("directmap", 2): 3.8e7, ("locked", 1): 2.8e6, ("locked", 2): 143.0,
         ("lockless", 1): 2.3e6, ("lockless", 2): 4.4e6, ("percpu", 1): 3.1e6, ("percpu", 2): 6.0e6,
         ("kmap-local", 1): 2.2e6, ("kmap-local", 2): 4.3e6}


def noise(seed: int) -> float:
    """A seeded +-1% that differs from repetition to repetition."""
    return 1.0 + 0.01 * np.sin(seed * 12.9898)


def fake_result(cfg, rate: float, failure=None, injected=None) -> dict:
    res = copy.deepcopy(TEMPLATE)
    res.update(variant=cfg.variant, vcpus=cfg.vcpus, seed=cfg.seed, workload=cfg.workload, config=cfg.as_dict(),
               placement=list(range(cfg.vcpus)))
    if cfg.variant != "locked":
        res["lock"] = None
    res["per_vcpu"] = [dict(TEMPLATE["per_vcpu"][v % 2], vcpu=v, core=v % 2, ops_per_s=rate / cfg.vcpus)
                       for v in range(cfg.vcpus)]
    res["totals"]["ops_per_s"] = rate
    res["totals"]["ops"] = int(rate * res["totals"]["measured_s"])
    if failure:
        res.update(failure=failure, verdict="FAILURE", partial=True)
    if injected:
        res["stress"] = {"injected": injected, "moves": 0, "stutters": 0, "quiescent_checks": 0}
    return res


@pytest.fixture
def fake_runs(monkeypatch, tmp_path):
    """harness.run replaced: every run returns at once with RATES (scaled by ``slower``)."""
    state = {"slower": {}, "calls": [], "hook": None}

    def run(cfg, on_sample=None, t_launch=None, hooks=None):
        rate = RATES.get((cfg.variant, min(cfg.vcpus, 2)), 1e6) * noise(cfg.seed)
        rate *= 1 - state["slower"].get(cfg.variant, 0.0)
        state["calls"].append(cfg)
        res = fake_result(cfg, rate)
        if state["hook"]:
            state["hook"](cfg, res)
        return res

    monkeypatch.setattr(harness, "run", run)
    # report's plots are matplotlib's work, seconds each, and none of these tests reads them
    monkeypatch.setattr(plots, "scale_plot", lambda res, path, note=None: Path(path).write_bytes(b"\x89PNG"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", str(output.WIDTH))     # as on a 100-column terminal
    return state


def last(out: str) -> str:
    """The last logical line: a line wrapped at 100 columns continues on lines indented by two spaces."""
    lines = out.rstrip("\n").splitlines()
    i = len(lines) - 1
    while i > 0 and lines[i].startswith("  "):
        i -= 1
    return " ".join(x.strip() for x in lines[i:])


def logical(out: str) -> list[str]:
    """The lines as printed before wrapping at 100 columns."""
    lines = []
    for line in out.splitlines():
        if line.startswith("  ") and lines and not lines[-1].startswith(" "):
            lines[-1] += " " + line.strip()
        else:
            lines.append(line)
    return lines


def main(capsys, *argv) -> tuple[int, str, str]:
    try:
        code = cli.main([str(a) for a in argv])
    except SystemExit as e:          # argparse refuses before cli.main's own handling
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


# --- never lose a result ------------------------------------------------------------------


@pytest.mark.parametrize("option", ["--json", "--csv"])
def test_output_to_a_folder_is_refused_before_the_run(capsys, fake_runs, tmp_path, option):
    """Before, ``--json DIR`` ran the whole run and then raised IsADirectoryError (exit 1).
    Mutation tried: dropping the isdir test in ``output.check_file``: the run starts."""
    code, out, err = main(capsys, "run", "--variant", "locked", "--vcpus", "2", option, tmp_path)
    assert code == 2 and fake_runs["calls"] == [], (out, err)
    assert err.count("\n") == 1 and f"{option} {tmp_path}: is a folder" in err


def test_output_on_a_filesystem_that_takes_no_file_is_refused(capsys, fake_runs):
    """/proc takes no new file (root included): refused up front, for run and report alike."""
    code, _, err = main(capsys, "run", "--variant", "locked", "--vcpus", "2", "--json", "/proc/x.json")
    assert code == 2 and fake_runs["calls"] == [] and "/proc cannot take a new file" in err
    code, _, err = main(capsys, "report", REPO / "tests", "--out", "/proc")
    assert code == 2 and "/proc" in err


def test_a_write_that_fails_after_the_run_keeps_the_result(capsys, fake_runs, tmp_path):
    """The folder of --json vanishes during the run: the result goes to a fallback file, named,
    and the exit status is 3 (output failed), not 1 (FAILURE). Before: a traceback, exit 1, the
    result lost. Mutation tried: ``write_outputs`` not calling ``save_fallback``: no file, test fails."""
    gone = tmp_path / "gone"
    gone.mkdir()
    fake_runs["hook"] = lambda cfg, res: gone.rmdir()
    code, out, err = main(capsys, "run", "--variant", "locked", "--vcpus", "2", "--json", gone / "r.json")
    assert code == output.EXIT_OUTPUT == 3, (out, err)
    saved = [p for p in tmp_path.glob("testbed-run-*.json")]
    assert len(saved) == 1 and str(saved[0]) in out and str(saved[0]) in err
    assert json.loads(saved[0].read_text())["variant"] == "locked"
    assert last(out).startswith("verdict: SUCCESS")
    assert "Traceback" not in err


def test_width_is_100_on_a_terminal_and_whole_lines_into_a_pipe(monkeypatch):
    class Tty:
        def isatty(self):
            return True

    monkeypatch.delenv("COLUMNS", raising=False)
    assert output.width_for(Tty(), wide=False) == 100 and output.width_for(Tty(), wide=True) is None
    assert output.width_for(open(os.devnull, "w"), wide=False) is None
    monkeypatch.setenv("COLUMNS", "80")
    assert output.width_for(open(os.devnull, "w"), wide=False) == 80


def test_a_closed_pipe_ends_quietly():
    """``testbed variants | head`` with the reader gone before the first line: exit 0, no traceback.
    Before: BrokenPipeError at the interpreter's last flush, exit 120. Mutation tried:
    ``Terminal._closed`` re-raising: the traceback is back. (A real process: ~1 s.)"""
    p = subprocess.Popen([sys.executable, "-m", "testbed", "variants"], cwd=REPO, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env=cli_env())
    p.stdout.close()
    err = p.stderr.read().decode()
    assert p.wait(60) == 0, err
    assert "Traceback" not in err and "BrokenPipe" not in err and "Exception ignored" not in err


def test_the_terminal_swallows_a_broken_pipe_and_keeps_going():
    r, w = os.pipe()
    os.close(r)
    stream = os.fdopen(w, "w", buffering=1)
    term = output.Terminal(stream)
    term.write("a line\n" * 10000)
    term.flush()
    assert term.closed_pipe
    term.write("more\n")       # no exception after the reader left


# --- diff of every kind -------------------------------------------------------------------


def _scale(capsys, path, *extra):
    code, out, err = main(capsys, "scale", "--variants", "locked,lockless", "--vcpus", "1,2", "--seed", "3",
                          "--json", path, *extra)
    assert code == 0, (out, err)


def test_diff_of_two_scale_files_prints_a_row_per_design_and_vcpus(capsys, fake_runs, tmp_path):
    """Before: "nan ops/s", exit 0, and nothing per row."""
    _scale(capsys, tmp_path / "a.json")
    fake_runs["slower"] = {"lockless": 0.25}
    _scale(capsys, tmp_path / "b.json")
    code, out, err = main(capsys, "diff", tmp_path / "a.json", tmp_path / "b.json")
    assert code == 0, err
    rows = [line for line in out.splitlines() if line.startswith(("locked ", "lockless "))]
    assert [r.split()[:3] for r in rows] == [["locked", "1", "vCPUs"], ["locked", "2", "vCPUs"],
                                             ["lockless", "1", "vCPUs"], ["lockless", "2", "vCPUs"]]
    ratios = [float(r.split()[6]) for r in rows]
    assert ratios[:2] == [1.0, 1.0] and all(abs(x - 0.75) < 0.01 for x in ratios[2:]), rows
    assert "nan" not in out and last(out).startswith("verdict: ")


@pytest.mark.parametrize("kind", ["compare", "timers", "stress"])
def test_diff_reads_every_kind(capsys, fake_runs, tmp_path, kind):
    argv = {"compare": ("compare", "--variants", "locked", "--repeat", "1"), "timers": ("timers",),
            "stress": ("stress", "--variants", "locked", "--duration", "1")}[kind]
    for name in ("a", "b"):
        code, out, err = main(capsys, *argv, "--seed", "3", "--json", tmp_path / f"{name}.json")
        assert code == 0, (out, err)
    code, out, err = main(capsys, "diff", tmp_path / "a.json", tmp_path / "b.json")
    assert code == 0, err
    assert "locked" in out and "1.000" in out and "nan" not in out


def test_diff_of_two_sweep_folders(capsys, fake_runs, tmp_path):
    for name, slower in (("a", 0.0), ("b", 0.5)):
        (tmp_path / name).mkdir()
        for vcpus in (1, 2):
            cfg = cli.checked_config(cli.build_parser().parse_args(["run", "--variant", "locked", "--vcpus",
                                                                    str(vcpus), "--seed", "1"]))
            res = fake_result(cfg, 1e6 * (1 - slower))
            res["sweep"] = {"name": f"locked-{vcpus}", "options": {"variant": "locked", "vcpus": vcpus, "seed": 1}}
            (tmp_path / name / f"locked-{vcpus}.json").write_text(json.dumps(res))
    code, out, err = main(capsys, "diff", tmp_path / "a", tmp_path / "b")
    assert code == 0, err
    rows = [line for line in out.splitlines() if line.startswith("variant=locked vcpus=")]
    assert len(rows) == 2 and all(" 0.500 " in r for r in rows) and "sweep folder" in out, out


def test_diff_across_kinds_names_the_kinds_first(capsys, fake_runs, tmp_path):
    """Before: five config differences, the kinds last."""
    main(capsys, "run", "--variant", "locked", "--vcpus", "2", "--seed", "3", "--json", tmp_path / "r.json")
    _scale(capsys, tmp_path / "s.json")
    code, _, err = main(capsys, "diff", tmp_path / "r.json", tmp_path / "s.json")
    assert code == 2
    assert err.startswith(f"testbed: error: {tmp_path / 'r.json'} is a run result and {tmp_path / 's.json'} a "
                          "scale one"), err


def _repeat(capsys, path, n):
    code, out, err = main(capsys, "run", "--variant", "lockless", "--vcpus", "2", "--seed", "3", "--repeat", n,
                          "--json", path)
    assert code == 0, (out, err)


def test_diff_max_slowdown_fails_a_significant_slowdown_and_passes_noise(capsys, fake_runs, tmp_path):
    """B 20% slower over 5 repetitions each: --max-slowdown 5 exits 1, --max-slowdown 30 exits 0, and
    B as fast as A exits 0. Mutation tried: comparing the interval's upper end (``ci_pct[1]``) with
    PCT in ``diff._verdict``: the 30% limit fails too."""
    _repeat(capsys, tmp_path / "a.json", 5)
    fake_runs["slower"] = {"lockless": 0.20}
    _repeat(capsys, tmp_path / "b.json", 5)
    fake_runs["slower"] = {}
    _repeat(capsys, tmp_path / "same.json", 5)
    code, out, _ = main(capsys, "diff", tmp_path / "a.json", tmp_path / "b.json", "--max-slowdown", "5")
    assert code == 1 and "significant" in out and last(out).startswith("verdict: FAILURE"), out
    code, out, _ = main(capsys, "diff", tmp_path / "a.json", tmp_path / "b.json", "--max-slowdown", "30")
    assert code == 0 and last(out).startswith("verdict: SUCCESS"), out
    code, out, _ = main(capsys, "diff", tmp_path / "a.json", tmp_path / "same.json", "--max-slowdown", "5")
    assert code == 0, out


def test_diff_max_slowdown_with_one_repetition_cannot_tell(capsys, fake_runs, tmp_path):
    _repeat(capsys, tmp_path / "a.json", 1)
    fake_runs["slower"] = {"lockless": 0.5}
    _repeat(capsys, tmp_path / "b.json", 1)
    code, out, _ = main(capsys, "diff", tmp_path / "a.json", tmp_path / "b.json", "--max-slowdown", "5")
    assert code == 0 and "not enough repetitions to tell (1" in out


# --- verdicts the data support ------------------------------------------------------------


def test_compare_with_one_repetition_makes_no_claim(capsys, fake_runs):
    """Before: 14 lines saying a difference "is larger than the spreads" with spreads of 0.00."""
    code, out, _ = main(capsys, "compare", "--repeat", "1", "--seed", "3")
    assert code == 0
    assert "larger than" not in out and "significant gaps" not in out
    findings = [x for x in logical(out) if x.startswith("findings: ")]
    assert len(findings) == 2 and all("not enough repetitions to tell (1" in x for x in findings), out


def test_compare_defaults_give_one_findings_line_per_scope_with_intervals(capsys, fake_runs, tmp_path):
    """The default 5 repetitions: locked's multi-core collapse is significant, with its interval,
    on one findings line per scope. Mutation tried: ``stats.excludes`` returning ``ci[0] > value``
    only: a design significantly faster than the next is no longer told apart (lines change)."""
    code, out, _ = main(capsys, "compare", "--seed", "3", "--json", tmp_path / "c.json")
    assert code == 0, out
    assert len(fake_runs["calls"]) == 5 * 2 * 5
    findings = [x for x in logical(out) if x.startswith("findings: ")]
    assert [f.split()[1] for f in findings] == ["single-core", "multi-core"], out
    res = json.loads((tmp_path / "c.json").read_text())
    locked = next(r for r in res["rows"] if r["variant"] == "locked")
    lo, hi = locked["multi_ci_pct"]
    assert locked["multi_significant"] is True and 99 < lo <= hi < 100.01
    assert f"[{lo:+.2f}, {hi:+.2f}]" in out
    assert last(out).startswith("verdict: SUCCESS") and "locked drops most" in last(out)
    assert list(res)[:3] == ["verdict", "figures", "findings"]
    assert locked["lock"] == "ticket"          # before: null, for a locked that ran with its ticket lock


def test_bootstrap_interval_needs_min_repeat_and_is_seeded():
    assert stats.bootstrap_mean_ci([1.0, 2.0, 3.0, 4.0]) is None
    xs = [10.0, 11.0, 9.5, 10.5, 10.2]
    a, b = stats.bootstrap_mean_ci(xs), stats.bootstrap_mean_ci(xs)
    assert a == b and a[0] < np.mean(xs) < a[1]
    assert stats.excludes(a) is True and stats.excludes(stats.bootstrap_mean_ci([-1, 1, -1, 1, 0.5])) is False
    assert stats.excludes(None) is None


# --- one verdict, 100 columns -------------------------------------------------------------


def _report_folder(tmp_path) -> Path:
    folder = tmp_path / "sweep"
    folder.mkdir()
    for vcpus in (1, 2):
        cfg = cli.checked_config(cli.build_parser().parse_args(["run", "--variant", "locked", "--vcpus", str(vcpus),
                                                                "--seed", "1"]))
        (folder / f"c{vcpus}.json").write_text(json.dumps(fake_result(cfg, 1e6 * vcpus)))
    return folder


COMMANDS = [
    ("run", "--variant", "locked", "--vcpus", "2", "--seed", "3"),
    ("run", "--variant", "locked", "--vcpus", "2", "--seed", "3", "--repeat", "2"),
    ("compare", "--seed", "3", "--repeat", "2"),
    ("compare", "--seed", "3", "--repeat", "1", "--variants", "locked", "--sweep", "cost-walk=0,100"),
    ("scale", "--seed", "3"),
    ("timers", "--seed", "3"),
    ("stress", "--seed", "3", "--duration", "1"),
    ("variants",), ("workloads",), ("explain",), ("explain", "linear"), ("placement", "--vcpus", "2"),
    ("sweep", REPO / "examples" / "figures.toml", "--out", "{tmp}/out", "--dry-run"),
    ("report", "{report}"),
    ("diff", "{a}", "{a}"),
]


@pytest.mark.parametrize("argv", COMMANDS, ids=[" ".join(map(str, c[:2])) for c in COMMANDS])
def test_every_command_fits_100_columns_and_ends_with_its_verdict(capsys, fake_runs, tmp_path, argv):
    """Before: run's per-vCPU table 112 columns, its checks line 238, scale's table 111, the stress
    echo ~200, variants lines over 100; compare, scale and timers ended on "results written to".
    Mutation tried: ``output.WIDTH = 120``: the run table fits but the wrapped lines do not."""
    subst = {"{tmp}": str(tmp_path), "{report}": str(_report_folder(tmp_path)) if "{report}" in argv else "",
             "{a}": str(tmp_path / "a.json")}
    if "{a}" in argv:
        _scale(capsys, tmp_path / "a.json")
    args = [str(a) for a in argv]
    for k, v in subst.items():
        args = [a.replace(k, v) for a in args]
    code, out, err = main(capsys, *args)
    assert code == 0, (out, err)
    lines = out.rstrip("\n").splitlines()
    too_wide = [line for line in lines if len(line) > output.WIDTH and " " in line.strip()]  # a path cannot wrap
    assert not too_wide, too_wide
    assert last(out).startswith("verdict: ") and "figures: " in last(out), lines[-3:]
    assert sum(line.startswith("verdict: ") for line in lines) == 1, [x for x in lines if x.startswith("verdict")]


def test_wide_shows_the_columns_the_narrow_table_drops(capsys, fake_runs):
    _, narrow, _ = main(capsys, "run", "--variant", "locked", "--vcpus", "2", "--seed", "3")
    _, wide, _ = main(capsys, "run", "--variant", "locked", "--vcpus", "2", "--seed", "3", "--wide")
    assert "hash%" not in narrow and "hash%" in wide and "stale_translations=0" in wide
    assert max(map(len, wide.splitlines())) > output.WIDTH


def test_stress_inject_caught_is_success_and_unseen_is_failure(capsys, fake_runs):
    """Before: --inject kill ended FAILURE, exit 1, whether or not the fault was caught."""
    def killed(cfg, res):
        res.update(failure={"kind": "killed", "vcpu": 1, "signal": "SIGKILL", "message": "vCPU 1 was killed"},
                   verdict="FAILURE")
        res["stress"] = {"injected": {"fault": "kill", "vcpu": 1}}

    fake_runs["hook"] = killed
    code, out, _ = main(capsys, "stress", "--variants", "locked", "--duration", "1", "--inject", "kill")
    assert code == 0 and last(out).startswith("verdict: SUCCESS (--inject kill"), out
    assert "caught in 1 of 1 runs" in last(out)
    fake_runs["hook"] = lambda cfg, res: res.update(stress={"injected": {"fault": "kill", "vcpu": 1}})
    code, out, _ = main(capsys, "stress", "--variants", "locked", "--duration", "1", "--inject", "kill")
    assert code == 1 and "went unseen in locked" in last(out)


def test_scale_says_a_collapse(capsys, fake_runs):
    code, out, _ = main(capsys, "scale", "--variants", "locked", "--vcpus", "1,2", "--seed", "3")
    line = last(out)
    assert code == 0 and "locked collapsed: 14" in line and "ops/s at 2 vCPUs" in line and "of one vCPU" in line, line
    assert "not enough repetitions to tell (1" in line


# --- files: JSON order, CSV columns -------------------------------------------------------


def test_json_lists_the_verdict_and_headline_figures_first_without_renaming(capsys, fake_runs, tmp_path):
    main(capsys, "run", "--variant", "locked", "--vcpus", "2", "--seed", "3", "--json", tmp_path / "r.json")
    res = json.loads((tmp_path / "r.json").read_text())
    assert list(res)[:2] == ["verdict", "figures"] and list(res["totals"])[0] == "ops_per_s"
    assert set(res) == set(TEMPLATE) | {"figures", "command"} and set(res["totals"]) == set(TEMPLATE["totals"])


def test_csv_columns_mean_the_same_in_every_csv(capsys, fake_runs, tmp_path):
    """scale.csv's "sched" held the model used and report.csv's the model asked for; scale.csv had no
    workload, seed or host columns. Now sched is what was asked, sched_model what was used, everywhere."""
    from testbed import report

    main(capsys, "scale", "--variants", "locked", "--vcpus", "1,2", "--seed", "3", "--csv", tmp_path / "s.csv")
    main(capsys, "run", "--variant", "locked", "--vcpus", "2", "--seed", "3", "--csv", tmp_path / "r.csv")
    folder = _report_folder(tmp_path)
    main(capsys, "report", folder)
    sc, rn, rp = (list(csv.DictReader(open(p))) for p in (tmp_path / "s.csv", tmp_path / "r.csv",
                                                          folder / report.CSV_NAME))
    for rows in (sc, rn, rp):
        for col in ("variant", "vcpus", "workload", "seed", "sched", "sched_model", "ops_per_s", "verdict",
                    "host_cpu_model"):
            assert col in rows[0], (col, list(rows[0]))
        assert all(r["sched"] == "" and r["sched_model"] == "dedicated" for r in rows)
    text = (REPO / "docs" / "results.md").read_text()
    from testbed.results import RUN_CSV, SCALE_CSV

    import re

    documented = {name.strip() for cell in re.findall(r"^\| `([^`]+)` \|", text, re.M) for name in cell.split(",")}
    assert set(RUN_CSV) | set(SCALE_CSV) <= documented, (set(RUN_CSV) | set(SCALE_CSV)) - documented


# --- the small habits ---------------------------------------------------------------------


def test_version(capsys):
    from testbed import __version__

    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"testbed {__version__}"


@pytest.mark.parametrize("argv, suggestion", [
    (("run", "--variant", "lockd"), "did you mean 'locked'?"),
    (("run", "--variant", "locked", "--lock", "tiket"), "did you mean 'ticket'?"),
    (("run", "--workload", "unifrom"), "did you mean 'uniform'?"),
    (("run", "--duraton", "1"), "did you mean '--duration'?"),
    (("compre",), "did you mean 'compare'?"),
    (("explain", "efficency"), "did you mean 'efficiency'?"),
])
def test_a_misspelling_gets_a_suggestion(capsys, fake_runs, argv, suggestion):
    try:
        code = cli.main(list(argv))
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and suggestion in err and err.count("\n") == 1, err
    assert fake_runs["calls"] == []


def test_durations_take_units(capsys, fake_runs):
    main(capsys, "run", "--variant", "locked", "--vcpus", "2", "--duration", "500ms", "--warmup", "2s",
         "--chunk-ms", "0.01s")
    cfg = fake_runs["calls"][-1]
    assert (cfg.duration, cfg.warmup, cfg.chunk_ms) == (0.5, 2.0, 10.0)
    code, _, err = main(capsys, "run", "--duration", "3 parsecs")
    assert code == 2 and "is not a time" in err


def test_run_says_which_variant_it_runs(capsys, fake_runs):
    _, out, _ = main(capsys, "run", "--vcpus", "2", "--seed", "3")
    assert "variant directmap (the baseline: no --variant given" in out.splitlines()[0]


def test_every_subcommand_help_opens_with_a_sentence_and_ends_with_an_example(capsys):
    parser = cli.build_parser()
    subs = next(a for a in parser._actions if a.choices and isinstance(a.choices, dict)).choices
    for name, sub in subs.items():
        text = sub.format_help()
        desc = sub.description or ""
        assert desc[:1].isupper() and ". " in desc + " ", (name, desc)
        assert "docs/results.md" in text
        last = text.rstrip().splitlines()
        assert last[-2].strip() == "example:" and last[-1].strip().startswith("testbed "), (name, last[-2:])


def test_help_shows_the_default_each_command_uses():
    """stress --help said warm-up 1 while stress runs 0; compare's repeat and duration likewise come
    from one declaration. Mutation tried: ``set_defaults(warmup=0.0)`` after ``add_run_options`` (the
    old way): the help says 1."""
    parser = cli.build_parser()
    subs = next(a for a in parser._actions if a.choices and isinstance(a.choices, dict)).choices
    for name in ("stress", "compare", "run", "scale", "timers"):
        sub = subs[name]
        args = sub.parse_args([])
        for action in sub._actions:
            if action.dest in ("warmup", "duration", "repeat") and action.help:
                assert f"(default {action.default:g}" in action.help, (name, action.dest, action.help)
                assert getattr(args, action.dest) == action.default


def test_glossary_and_docs_agree(capsys):
    """Every term ``testbed explain`` knows is in docs/results.md with the same definition."""
    from testbed import glossary

    text = (REPO / "docs" / "results.md").read_text()
    for k, v in glossary.TERMS.items():
        assert f"- **{k}**: {v}" in text, k
    code, out, _ = main(capsys, "explain", "p99_cycles")
    assert code == 0 and out.startswith("- p99 cyc: ")


# --- plots and the worst latency per second -----------------------------------------------


def test_plot_lines_that_coincide_stay_visible(monkeypatch, tmp_path):
    """Two designs with the very same figures: each line has its own marker and its own x offset, so
    neither hides the other. Before: the p99 panel drew one line over the other."""
    import matplotlib.figure

    seen = {}
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda self, *a, **k: seen.setdefault("fig", self))
    rows = [{"variant": v, "vcpus": n, "sched": "dedicated", "ops_per_s": 1e6 * n, "linear": 1e6 * n,
             "p99_cycles": 1024} for v in ("a", "b") for n in (1, 2)]
    plots.scale_plot({"rows": rows, "workload": "uniform", "seed": 1,
                      "host": {"cpu_model": "x", "physical_cores": 2}}, str(tmp_path / "p.png"))
    p99 = [line for line in seen["fig"].axes[1].get_lines() if line.get_marker() not in (None, "None", "")]
    assert len(p99) == 2
    (x1, y1, m1), (x2, y2, m2) = ((tuple(l.get_xdata()), tuple(l.get_ydata()), l.get_marker()) for l in p99)
    assert y1 == y2 and m1 != m2 and x1 != x2


def test_latwatch_folds_the_kernel_maximum_into_seconds():
    """The worker side and the parent side of the per-second worst latency, on one stats row.
    Mutation tried: not zeroing the skipped seconds in ``fold``: second 7 reports second 1's value."""
    row = np.zeros(abi.N_STATS, dtype=np.int64)
    stats_ = row[None, :]
    col = latwatch.Collector()
    for t_s, m in ((0.1, 100), (0.5, 300), (1.2, 50), (1.9, 70)):
        row[abi.S_LAT_MAX] = max(row[abi.S_LAT_MAX], m)
        latwatch.fold(row, 0, int(t_s * 1e9))
        assert row[abi.S_LAT_MAX] == 0
    col.collect(stats_, 1)
    assert col.per_second() == [300, 70]
    row[abi.S_LAT_MAX] = 9
    latwatch.fold(row, 0, int(7.5e9))               # a pause: seconds 2..6 had no chunk at all
    col.collect(stats_, 1)
    assert col.per_second() == [300, 70, 0, 0, 0, 0, 0, 9]
    assert latwatch.run_max(row) == 300


def test_a_recorded_run_has_the_worst_latency_of_each_second():
    """tests/data/run-locked.json is a real run of this tree: 2.5 s, so three seconds."""
    worst = TEMPLATE["latency"]["worst_per_s"]
    assert len(worst) == 3 and max(worst) == TEMPLATE["latency"]["max"]


def test_hold_verdict_keeps_back_only_the_verdict_line(monkeypatch):
    """rerun's hold: every other line passes as it comes, through the command's own Terminal (so
    a terminal stays a terminal for the command), the verdict is collected for the caller to print
    last. Breaks if the hold dropped lines, let the verdict through, or replaced the Terminal."""
    import io

    buf = io.StringIO()
    term = output.Terminal(buf, None)
    monkeypatch.setattr(sys, "stdout", term)
    with output.hold_verdict() as held:
        assert sys.stdout is term
        print("testbed run: ...")
        print("verdict: SUCCESS (checks passed in 1 run); figures: x")
        print("partial", end="")
        print(" line")
    print("after")
    assert buf.getvalue() == "testbed run: ...\npartial line\nafter\n"
    assert held == ["verdict: SUCCESS (checks passed in 1 run); figures: x"]
