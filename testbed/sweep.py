"""Sweeps: a grid of runs from one TOML plan, run here or on a Slurm cluster.

A plan names run options (the long options of ``testbed run``, without the
dashes: ``variant``, ``vcpus``, ``hash``, ``working-set`` or ``working_set``,
``no-cost``...). A list is an axis of the grid, anything else is fixed, and
``repeat = R`` runs every point R times with seeds seed..seed+R-1::

    variant = ["directmap", "locked", "lockless"]
    vcpus = [1, 2]
    workload = "guest"
    duration = 2
    repeat = 3

The plan expands to cells (repetition outermost, so that the designs of one
repetition run next to each other and slow drift of the machine hits them all
alike). Every cell is parsed and validated before the first one starts.

A cell runs exactly as ``testbed run`` would and its result, the run's own
self-describing JSON plus a ``sweep`` block, is written atomically (temporary
file, then rename) to ``DIR/<name>-<id>.json``. The id is a hash of every
option of the cell (defaults included), so a result belongs to one cell
whatever the plan around it looks like: running a plan again skips the cells
whose result is there and complete, a changed plan runs only the cells it did
not have, and an interrupted sweep loses at most the cell in progress. A cell
that could not produce a result (an exception, a Slurm job that died) leaves
``DIR/<name>-<id>.failed.json``; ``--retry-failed`` runs those cells again, and
the cells whose run ended in FAILURE.

Executors: ``local`` runs the cells one after another (each needs the whole
host); ``slurm`` submits one job per cell, each on a whole node
(``--exclusive``), through submitit, and the results come back through ``DIR``,
which must be on a file system the nodes share. A plan's seed defaults to 1,
so that running it again finds the same cells.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import itertools
import json
import math
import os
import re
import shutil
import sys
import time
from pathlib import Path

from .errors import UsageError, signal_exit

if sys.version_info >= (3, 11):
    import tomllib
else:                                   # pragma: no cover - Python 3.10
    import tomli as tomllib

DEFAULT_SEED = 1
STARTUP_GUESS_S = 1.0                  # start-up of a cell before its first one is measured
SUBMITIT_DIR = ".submitit"
SPECIAL = ("repeat",)


# --- the plan ----------------------------------------------------------------------------


class _RaisingParser(argparse.ArgumentParser):
    """The options of ``testbed run``, with errors raised instead of printed."""

    def error(self, message):
        raise UsageError(message)


@functools.lru_cache(maxsize=1)
def _run_parser() -> tuple[argparse.ArgumentParser, dict]:
    """The run options, and plan key -> argparse action (both spellings: working-set, working_set)."""
    from .cli import add_run_options

    ap = _RaisingParser(prog="testbed run", add_help=False)
    add_run_options(ap)
    keys = {}
    for action in ap._actions:
        for opt in action.option_strings:
            if opt.startswith("--"):
                keys[opt[2:]] = action
                keys[opt[2:].replace("-", "_")] = action
    return ap, keys


def _flag(action) -> str:
    return next(o for o in action.option_strings if o.startswith("--"))


def _option_argv(plan: str, key: str, action, value) -> list[str]:
    """argv for one plan value, type-checked against the run option it names."""
    where = f"{plan}: key '{key}'"
    if isinstance(action, argparse._StoreTrueAction):
        if not isinstance(value, bool):
            raise UsageError(f"{where}: {value!r} is not true or false")
        return [_flag(action)] if value else []
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise UsageError(f"{where}: {_toml_repr(value)} is not a number or a string")
    return [f"{_flag(action)}={value}"]


def _toml_repr(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a table"
    return repr(value)


@dataclasses.dataclass(frozen=True)
class Cell:
    index: int
    rep: int
    options: dict          # plan key -> value, this cell's point of the grid (fixed options included)
    axes: tuple            # the plan keys that vary
    argv: tuple            # the run options as 'testbed run' would read them
    cell_id: str
    name: str              # file name stem: readable part, then the id

    @property
    def label(self) -> str:
        parts = [f"{k}={self.options[k]}" for k in self.axes]
        return " ".join(parts) if parts else "single cell"

    def record(self, plan: str) -> dict:
        return {"plan": plan, "cell": self.cell_id, "name": self.name, "index": self.index, "rep": self.rep,
                "options": self.options, "argv": list(self.argv)}

    def seconds(self) -> float:
        ns = parse_argv(self.argv)
        return ns.warmup + ns.duration


@dataclasses.dataclass
class Plan:
    path: str
    cells: list
    axes: tuple
    repeat: int


def parse_argv(argv) -> argparse.Namespace:
    ap, _ = _run_parser()
    return ap.parse_args(list(argv))


def _slug(value) -> str:
    return re.sub(r"[^A-Za-z0-9.+]+", "", str(value))[:24] or "x"


def _cell_id(ns: argparse.Namespace) -> str:
    blob = json.dumps(sorted(vars(ns).items()), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


def load_plan(path: str) -> Plan:
    """The plan's cells, every one parsed (not yet validated); UsageError names the file and key."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise UsageError(f"{path}: no such plan file") from None
    except IsADirectoryError:
        raise UsageError(f"{path}: is a folder, not a plan file") from None
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"{path}: not TOML: {e}") from None
    except UnicodeDecodeError:
        raise UsageError(f"{path}: not TOML: not UTF-8 text") from None
    ap, keys = _run_parser()
    if not data:
        raise UsageError(f"{path}: the plan is empty; name at least one run option, e.g. variant = [\"locked\"]")
    repeat = data.pop("repeat", 1)
    if isinstance(repeat, bool) or not isinstance(repeat, int) or repeat < 1:
        raise UsageError(f"{path}: key 'repeat': {_toml_repr(repeat)} must be a whole number of at least 1")
    seen_dest = {}
    axes, fixed_argv = [], []
    for key, value in data.items():
        action = keys.get(key)
        if action is None:
            known = sorted({_flag(a)[2:] for a in keys.values()} | set(SPECIAL))
            raise UsageError(f"{path}: key '{key}': unknown option; known: {', '.join(known)}")
        if action.dest in seen_dest:
            raise UsageError(f"{path}: key '{key}': same option as key '{seen_dest[action.dest]}'; keep one")
        seen_dest[action.dest] = key
        if isinstance(value, list):
            if not value:
                raise UsageError(f"{path}: key '{key}': empty list; give at least one value")
            argvs = [_option_argv(path, key, action, v) for v in value]
            if len({tuple(a) for a in argvs}) != len(argvs):
                raise UsageError(f"{path}: key '{key}': a value appears twice in {_toml_repr(value)}")
            axes.append((key, value, argvs))
        else:
            fixed_argv.append((key, value, _option_argv(path, key, action, value)))
    for key, value, argv in fixed_argv:         # a bad fixed value names its key
        try:
            ap.parse_args(argv)
        except UsageError as e:
            raise UsageError(f"{path}: key '{key}': {e}") from None
    for key, values, argvs in axes:
        for v, argv in zip(values, argvs):
            try:
                ap.parse_args(argv)
            except UsageError as e:
                raise UsageError(f"{path}: key '{key}' value {_toml_repr(v)}: {e}") from None

    seed_key = seen_dest.get("seed")
    axis_keys = tuple(k for k, _, _ in axes)
    if repeat > 1 and seed_key not in axis_keys:
        axis_keys = axis_keys + (("seed",) if seed_key is None else (seed_key,))
    fixed = {k: v for k, v, _ in fixed_argv}
    cells = []
    for rep in range(repeat):
        for combo in itertools.product(*[list(zip(values, argvs)) for _, values, argvs in axes]):
            options = dict(fixed)
            argv = [a for _, _, av in fixed_argv for a in av]
            for (key, _, _), (value, av) in zip(axes, combo):
                options[key] = value
                argv += av
            base = options.get(seed_key, DEFAULT_SEED) if seed_key else DEFAULT_SEED
            if not isinstance(base, int):
                raise UsageError(f"{path}: key '{seed_key}': {_toml_repr(base)} is not a whole number")
            options[seed_key or "seed"] = base + rep
            argv = [a for a in argv if not a.startswith("--seed=")] + [f"--seed={base + rep}"]
            ns = ap.parse_args(argv)
            cid = _cell_id(ns)
            readable = "_".join(f"{_slug(k)}-{_slug(options[k])}" for k in axis_keys) or "cell"
            cells.append(Cell(index=len(cells), rep=rep, options=options, axes=axis_keys, argv=tuple(argv),
                              cell_id=cid, name=f"{readable}-{cid}"))
    dup = {c.cell_id for c in cells if sum(d.cell_id == c.cell_id for d in cells) > 1}
    if dup:
        raise UsageError(f"{path}: two cells run the same options ({sorted(dup)[0]}); remove the duplicate value")
    return Plan(path=path, cells=cells, axes=axis_keys, repeat=repeat)


def validate_cells(plan: Plan, placement: bool = True) -> dict:
    """Every cell's validated config, before anything starts; the first bad cell raises UsageError.

    With ``placement`` the vCPUs must also fit on this host (the local executor);
    a Slurm cell is placed on its node when it runs.
    """
    from .cli import checked_config, config_from
    from .config import validate

    out = {}
    for cell in plan.cells:
        ns = parse_argv(cell.argv)
        try:
            out[cell.cell_id] = checked_config(ns) if placement else validate(config_from(ns))
        except UsageError as e:
            raise UsageError(f"{plan.path}: cell {cell.index + 1} ({cell.label}): {e}") from None
    return out


# --- results in DIR ------------------------------------------------------------------------


def result_path(out: Path, cell: Cell) -> Path:
    return out / f"{cell.name}.json"


def failed_path(out: Path, cell: Cell) -> Path:
    return out / f"{cell.name}.failed.json"


def write_atomic(data: dict, path: Path) -> None:
    """Write JSON so that ``path`` is either absent, the old file, or the whole new one."""
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    try:
        with open(tmp, "w") as f:
            json.dump(data, f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def read_complete(path: Path, cell_id: str) -> dict | None:
    """The cell's result if ``path`` holds a whole one for this cell; None if absent, partial or foreign."""
    from .results import KIND, SCHEMA

    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("kind") != KIND or data.get("schema") != SCHEMA:
        return None
    if (data.get("sweep") or {}).get("cell") != cell_id or data.get("interrupted"):
        return None
    if data.get("verdict") not in ("SUCCESS", "FAILURE") or not isinstance(data.get("totals"), dict):
        return None
    return data


def cell_state(out: Path, cell: Cell) -> str:
    """'done', 'failed' (run ended in FAILURE, or no result but a failure record) or 'todo'."""
    res = read_complete(result_path(out, cell), cell.cell_id)
    if res is not None:
        return "done" if res["verdict"] == "SUCCESS" else "failed"
    return "failed" if failed_path(out, cell).exists() else "todo"


def run_cell(argv, record: dict, out: str) -> dict:
    """Run one cell as ``testbed run`` would and write its result into ``out``; a summary.

    This is the function a Slurm job runs: everything it needs travels in its arguments.
    """
    from . import harness
    from .cli import checked_config

    cfg = checked_config(parse_argv(argv))
    res = harness.run(cfg)
    if res["interrupted"]:
        raise harness.Interrupted(res["interrupted"])
    job = os.environ.get("SLURM_JOB_ID")
    res["sweep"] = {**record, "executor": "slurm" if job else "local", "slurm_job": job}
    out_dir = Path(out)
    write_atomic(res, out_dir / f"{record['name']}.json")
    stale = out_dir / f"{record['name']}.failed.json"
    if stale.exists():
        stale.unlink()
    return {"verdict": res["verdict"], "ops_per_s": res["totals"]["ops_per_s"], "host": res["host"]["hostname"],
            "compile_s": res["startup"].get("compile_s", 0.0)}


def record_failure(out: Path, cell: Cell, plan: str, error: str, **extra) -> None:
    from . import hostinfo
    from .results import SCHEMA

    write_atomic({"schema": SCHEMA, "kind": "testbed.sweep-failure", "sweep": cell.record(plan),
                  "error": error, "host": hostinfo.host(), **extra}, failed_path(out, cell))


def _last_line(text: str) -> str:
    from .cli import one_line

    lines = [ln for ln in str(text).strip().splitlines() if ln.strip()]
    return one_line(lines[-1] if lines else str(text))[:500]


# --- progress ------------------------------------------------------------------------------


class Progress:
    """Cells done, failed, left, and an estimate of the time left from the cells run so far."""

    def __init__(self, cells, done: int, failed: int, parallel: bool = False):
        self.todo = list(cells)
        self.done, self.failed = done, failed
        self.total = done + failed + len(self.todo)
        self.overheads: list[float] = []
        self.parallel = parallel

    def estimate(self, cells) -> float:
        overhead = sorted(self.overheads)[len(self.overheads) // 2] if self.overheads else STARTUP_GUESS_S
        secs = [c.seconds() + overhead for c in cells]
        return max(secs, default=0.0) if self.parallel else sum(secs)

    def finish(self, cell: Cell, state: str, wall: float | None, compile_s: float = 0.0) -> None:
        """Count a cell; its start-up beyond a one-off kernel compile predicts the next cells'."""
        self.todo = [c for c in self.todo if c.cell_id != cell.cell_id]
        if state == "done":
            self.done += 1
        else:
            self.failed += 1
        if wall is not None:
            self.overheads.append(max(0.0, wall - cell.seconds() - compile_s))

    def line(self) -> str:
        left = len(self.todo)
        eta = f", about {_duration(self.estimate(self.todo))} left" if left and not self.parallel else ""
        return f"done {self.done}, failed {self.failed}, left {left} of {self.total}{eta}"


def _duration(s: float) -> str:
    s = int(math.ceil(s))
    return f"{s // 60} min {s % 60:02d} s" if s >= 60 else f"{s} s"


# --- executors -----------------------------------------------------------------------------


def _describe(res: dict | None) -> str:
    if res is None:
        return "no result"
    return f"{res['verdict']} {res['totals']['ops_per_s']:,.0f} ops/s"


def run_local(plan: Plan, out: Path, todo: list, progress: Progress) -> int:
    from . import harness

    for cell in todo:
        print(f"[{cell.index + 1}/{len(plan.cells)}] {cell.label} ...", flush=True)
        t0 = time.perf_counter()
        try:
            summary = run_cell(cell.argv, cell.record(plan.path), str(out))
        except (KeyboardInterrupt, harness.Interrupted) as e:
            name = e.signame if isinstance(e, harness.Interrupted) else "SIGINT"
            print(f"sweep interrupted by {name}: cell {cell.index + 1} ({cell.label}) lost, every other result "
                  f"kept; run the same command to go on", flush=True)
            return signal_exit(name)
        except Exception as e:      # one cell that breaks must not lose the sweep
            record_failure(out, cell, plan.path, f"{type(e).__name__}: {_last_line(e)}")
            progress.finish(cell, "failed", None)
            print(f"  error: {type(e).__name__}: {_last_line(e)} | {progress.line()}", flush=True)
            continue
        wall = time.perf_counter() - t0
        state = "done" if summary["verdict"] == "SUCCESS" else "failed"
        progress.finish(cell, state, wall, summary["compile_s"])
        print(f"  {summary['verdict']} {summary['ops_per_s']:,.0f} ops/s in {wall:.1f} s | {progress.line()}",
              flush=True)
    return 0


def _slurm_time(text: str | None, cells) -> str:
    """sbatch --time: minutes, or [D-]H:MM[:SS]; by default three times the longest cell plus 5 minutes."""
    if text is None:
        longest = max(c.seconds() for c in cells)
        return str(5 + math.ceil(3 * longest / 60))
    if not re.fullmatch(r"\d+|(\d+-)?\d+(:\d\d){1,2}|\d+-\d+", text):
        raise UsageError(f"--time {text}: give minutes (30) or [days-]hours:minutes[:seconds] (1:30:00)")
    return text


def slurm_options(pairs) -> dict:
    out = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]*", key):
            raise UsageError(f"--slurm-option {pair!r}: give KEY=VALUE with an sbatch long option as KEY, "
                             "e.g. --slurm-option account=lab")
        out[key.replace("-", "_")] = value
    return out


def _job_error(job) -> str:
    try:
        exc = job.exception()
    except Exception as e:        # submitit cannot read the job's outcome (cancelled, node lost, ...)
        return f"{type(e).__name__}: {_last_line(e)}"
    if exc is None:
        return "the job ended without writing a result"
    return f"{type(exc).__name__}: {_last_line(exc)}"


def run_slurm(plan: Plan, out: Path, todo: list, progress: Progress, args) -> int:
    import submitit

    ex = submitit.SlurmExecutor(folder=str(out / SUBMITIT_DIR / "%j"))
    params = dict(exclusive=True, time=_slurm_time(args.time, todo), job_name="testbed-sweep",
                  signal_delay_s=30)
    if args.partition:
        params["partition"] = args.partition
    extra = slurm_options(args.slurm_option)
    if extra:
        params["additional_parameters"] = extra
    ex.update_parameters(**params)
    jobs = []
    try:
        for cell in todo:
            try:
                job = ex.submit(run_cell, list(cell.argv), cell.record(plan.path), str(out.resolve()))
            except Exception as e:     # sbatch refused: an option it does not know, a partition that is not there
                if not jobs:
                    raise UsageError(f"sbatch refused the first cell: {_last_line(e)}") from None
                raise
            jobs.append((cell, job, time.monotonic()))
            print(f"[{cell.index + 1}/{len(plan.cells)}] {cell.label}: Slurm job {job.job_id}", flush=True)
        pending = list(jobs)
        while pending:
            time.sleep(1.0)
            still = []
            for cell, job, t0 in pending:
                if not job.done():
                    still.append((cell, job, t0))
                    continue
                res = read_complete(result_path(out, cell), cell.cell_id)
                if res is None:
                    err = _job_error(job)
                    record_failure(out, cell, plan.path, err, slurm_job=job.job_id, slurm_state=job.state)
                    progress.finish(cell, "failed", None)
                    print(f"  job {job.job_id} ({cell.label}): {job.state}: {err} | {progress.line()}", flush=True)
                else:
                    progress.finish(cell, "done" if res["verdict"] == "SUCCESS" else "failed", None)
                    print(f"  job {job.job_id} ({cell.label}) on {res['host']['hostname']}: {_describe(res)} | "
                          f"{progress.line()}", flush=True)
            pending = still
    except KeyboardInterrupt:
        left = [job for _, job, _ in jobs if not job.done()]
        for job in left:
            job.cancel(check=False)
        print(f"sweep interrupted: cancelled {len(left)} Slurm jobs; results already in {out} are kept", flush=True)
        return 130
    return 0


# --- the command ---------------------------------------------------------------------------


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("plan", help="TOML plan: run options, a list for each axis of the grid, repeat = R")
    ap.add_argument("--out", required=True, help="folder for one JSON result per cell (created if missing)")
    ap.add_argument("--executor", choices=("local", "slurm"), default="local",
                    help="local: cells one after another on this host (default); slurm: one job per cell")
    ap.add_argument("--retry-failed", action="store_true", help="run again the cells that failed")
    ap.add_argument("--dry-run", action="store_true", help="list the cells and what would run; start nothing")
    ap.add_argument("--partition", default=None, help="slurm: partition to submit to")
    ap.add_argument("--time", default=None, help="slurm: time limit per job, minutes or H:MM:SS "
                                                 "(default three times the longest cell plus 5 minutes)")
    ap.add_argument("--slurm-option", action="append", default=[], metavar="K=V",
                    help="slurm: any other sbatch option, e.g. account=lab (repeatable)")


def main(args) -> int:
    from .cli import check_writable

    if args.executor == "slurm" and shutil.which("sbatch") is None:
        raise UsageError("--executor slurm: sbatch not found on PATH; install Slurm's client tools, load its "
                         "module, or use --executor local")
    if args.executor == "local" and (args.partition or args.time or args.slurm_option):
        raise UsageError("--partition, --time and --slurm-option are for --executor slurm")
    plan = load_plan(args.plan)
    validate_cells(plan, placement=args.executor == "local")
    slurm_options(args.slurm_option)
    if args.executor == "slurm":
        _slurm_time(args.time, plan.cells)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: is a file; give a folder")
    check_writable(str(out / "x") if out.exists() else str(out), "--out")

    states = {c.cell_id: cell_state(out, c) for c in plan.cells}
    done = sum(s == "done" for s in states.values())
    failed = [c for c in plan.cells if states[c.cell_id] == "failed"]
    todo = [c for c in plan.cells if states[c.cell_id] == "todo" or (args.retry_failed and states[c.cell_id] == "failed")]
    progress = Progress(todo, done=done, failed=0 if args.retry_failed else len(failed),
                        parallel=args.executor == "slurm")
    axes = ", ".join(f"{k} x{len({c.options[k] for c in plan.cells})}" for k in plan.axes) or "no axes"
    print(f"testbed sweep: {args.plan}: {len(plan.cells)} cells ({axes}); {done} done, {len(failed)} failed"
          f"{' (to retry)' if args.retry_failed and failed else ''}, {len(todo)} to run on {args.executor}"
          + (f", about {_duration(progress.estimate(todo))}" if todo and args.executor == "local" else ""),
          flush=True)
    if args.dry_run:
        for c in plan.cells:
            print(f"  {c.index + 1:>4} {states[c.cell_id]:6} {c.name}  {c.label}")
        print(f"verdict: SUCCESS (--dry-run: nothing run); figures: {len(todo)} of {len(plan.cells)} cells to run")
        return 0
    if not todo:
        print("nothing to run: every cell has its result" + ("" if args.retry_failed or not failed else
                                                             f" ({len(failed)} failed: --retry-failed runs them)"))
        print(f"verdict: {'FAILURE' if failed else 'SUCCESS'} ({len(failed)} of {len(plan.cells)} cells failed); "
              f"figures: 'testbed report {out}' merges them")
        return 0 if not failed else 1
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob(".*.json.tmp.*"):     # left by a sweep killed mid-write
        stale.unlink()
    if args.executor == "local":
        rc = run_local(plan, out, todo, progress)
    else:
        rc = run_slurm(plan, out, todo, progress, args)
    if rc:
        return rc
    print(f"sweep finished: {progress.line()}; results in {out}; 'testbed report {out}' merges them")
    print(f"verdict: {'FAILURE' if progress.failed else 'SUCCESS'} ({progress.failed} cells failed); figures: "
          f"{progress.line()}; 'testbed diff {out} OTHER' compares them with another sweep")
    return 0 if progress.failed == 0 else 1
