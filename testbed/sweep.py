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

The plan is ``sweepplan``, the results in ``DIR`` ``sweepstore``, the executors
``sweepexec``; this module is the command.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from .errors import UsageError
from .options import check_writable
from .sweepexec import Progress, _duration, _slurm_time, run_local, run_slurm, slurm_options
from .sweepplan import load_plan, validate_cells
from .sweepstore import cell_state


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
