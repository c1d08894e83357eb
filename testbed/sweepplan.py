"""A sweep's plan: a TOML file of run options, expanded into cells, every one parsed and validated
before the first starts (the format: ``testbed/sweep.py``).

A cell's run options are read as ``testbed run`` reads them (``options.add_run_options``), so a
plan accepts exactly the long options of ``testbed run`` (both spellings: ``working-set``,
``working_set``); its id is a hash of every option of the cell, defaults included.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import itertools
import json
import re
import sys

from .config import validate
from .errors import UsageError
from .options import add_run_options, checked_config, config_from

if sys.version_info >= (3, 11):
    import tomllib
else:                                   # pragma: no cover - Python 3.10
    import tomli as tomllib

DEFAULT_SEED = 1
SPECIAL = ("repeat",)


class _RaisingParser(argparse.ArgumentParser):
    """The options of ``testbed run``, with errors raised instead of printed."""

    def error(self, message):
        raise UsageError(message)


@functools.lru_cache(maxsize=1)
def _run_parser() -> tuple[argparse.ArgumentParser, dict]:
    """The run options, and plan key -> argparse action (both spellings: working-set, working_set)."""
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
    out = {}
    for cell in plan.cells:
        ns = parse_argv(cell.argv)
        try:
            out[cell.cell_id] = checked_config(ns) if placement else validate(config_from(ns))
        except UsageError as e:
            raise UsageError(f"{plan.path}: cell {cell.index + 1} ({cell.label}): {e}") from None
    return out
