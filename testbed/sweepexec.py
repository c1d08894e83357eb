"""A sweep's executors: ``local`` runs the cells one after another on this host, ``slurm`` submits
one job per cell (``testbed/sweep.py``); both count what is done and left (``Progress``).

``run_cell`` is what a Slurm job runs: everything it needs travels in its arguments, and it
writes its result into the sweep's folder itself.
"""

from __future__ import annotations

import math
import os
import re
import time
from pathlib import Path

from .errors import UsageError, signal_exit
from .options import checked_config
from .sweepplan import Cell, Plan, parse_argv
from .sweepstore import last_line, read_complete, record_failure, result_path, write_atomic

STARTUP_GUESS_S = 1.0                  # start-up of a cell before its first one is measured
SUBMITIT_DIR = ".submitit"


def run_cell(argv, record: dict, out: str) -> dict:
    """Run one cell as ``testbed run`` would and write its result into ``out``; a summary.

    This is the function a Slurm job runs: everything it needs travels in its arguments.
    """
    from . import harness     # the compiled loops and the process machinery: loaded when a cell runs, not by --help

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
            record_failure(out, cell, plan.path, f"{type(e).__name__}: {last_line(e)}")
            progress.finish(cell, "failed", None)
            print(f"  error: {type(e).__name__}: {last_line(e)} | {progress.line()}", flush=True)
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
        return f"{type(e).__name__}: {last_line(e)}"
    if exc is None:
        return "the job ended without writing a result"
    return f"{type(exc).__name__}: {last_line(exc)}"


def run_slurm(plan: Plan, out: Path, todo: list, progress: Progress, args) -> int:
    import submitit     # only a Slurm sweep needs it, and it is slow to import

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
                    raise UsageError(f"sbatch refused the first cell: {last_line(e)}") from None
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
