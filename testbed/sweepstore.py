"""A sweep's results in its folder: one JSON file per cell, written atomically, read back to tell
which cells are done, failed or still to run (``testbed/sweep.py``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from . import hostinfo
from .options import one_line
from .results import KIND, SCHEMA


def result_path(out: Path, cell) -> Path:
    return out / f"{cell.name}.json"


def failed_path(out: Path, cell) -> Path:
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


def cell_state(out: Path, cell) -> str:
    """'done', 'failed' (run ended in FAILURE, or no result but a failure record) or 'todo'."""
    res = read_complete(result_path(out, cell), cell.cell_id)
    if res is not None:
        return "done" if res["verdict"] == "SUCCESS" else "failed"
    return "failed" if failed_path(out, cell).exists() else "todo"


def record_failure(out: Path, cell, plan: str, error: str, **extra) -> None:
    write_atomic({"schema": SCHEMA, "kind": "testbed.sweep-failure", "sweep": cell.record(plan),
                  "error": error, "host": hostinfo.host(), **extra}, failed_path(out, cell))


def last_line(text: str) -> str:
    """An error's last line, on one line: what a cell's failure record and the progress lines say."""
    lines = [ln for ln in str(text).strip().splitlines() if ln.strip()]
    return one_line(lines[-1] if lines else str(text))[:500]
