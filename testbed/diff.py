"""``testbed diff A B``: two results of one kind, row by row (pyperf's ``compare_to``).

Every kind of result reduces to cells: a key (design, vCPUs, and the scheduling
model or sweep point where there is one) and the ops/s of each repetition in that
cell. A row per cell in both gives A's and B's mean, B/A, and, when both sides hold
``stats.MIN_REPEAT`` repetitions, a 95% bootstrap interval of how much slower B is
(``stats.bootstrap_slowdown_ci``); with fewer, "not enough repetitions to tell (N)".

``--max-slowdown PCT`` exits 1 when any row is significantly slower by more than
PCT percent: the interval's lower end lies above PCT (pytest-benchmark's
``--benchmark-compare-fail``, pyperf's ``compare_to``, with a test behind them).

Two results of different kinds are refused first by kind; then, as before, by host
and configuration (``results.incomparable``) unless ``--force``. A comparison of the
hosts' facts beyond the identity keys belongs to ``hostinfo.compare_facts``: when it offers
``compare_hosts(a_host, b_host) -> list[str]``, its lines are printed under the header.
"""

from __future__ import annotations

import json
from pathlib import Path

from . import stats
from .errors import ResultsError, UsageError

SWEEP = "testbed.sweep-folder"
KINDS = {"testbed.run": "run", "testbed.repeat": "run", "testbed.compare": "compare", "testbed.scale": "scale",
         "testbed.timers": "timers", "testbed.stress": "stress", SWEEP: "sweep folder"}


def load(path: str) -> dict:
    """A results file, or a sweep's folder as one result of kind ``testbed.sweep-folder``."""
    from . import results

    p = Path(path)
    if p.is_dir():
        runs = []
        for f in sorted(p.glob("*.json")):
            try:
                data = json.loads(f.read_text())
            except (OSError, ValueError):
                continue
            if isinstance(data, dict) and data.get("kind") == "testbed.run" and data.get("schema") == results.SCHEMA:
                runs.append(data)
        if not runs:
            raise ResultsError(f"{path}: a folder with no testbed run results; give a sweep's --out folder")
        first = runs[0]
        return {"schema": results.SCHEMA, "kind": SWEEP, "seed": first["seed"], "host": first["host"],
                "config": {}, "runs": runs, "folder": str(p)}
    return results.read_json(path)


def _key_text(key: tuple) -> str:
    return " ".join(str(k) for k in key if k not in (None, ""))


def cells(res: dict) -> dict[tuple, list[float]]:
    """(key) -> ops/s of each repetition, for any kind of result."""
    kind = res["kind"]
    out: dict[tuple, list[float]] = {}

    def add(key, run):
        out.setdefault(key, []).append(run["totals"]["ops_per_s"])

    if kind == "testbed.run":
        add((res["variant"], f"{res['vcpus']} vCPUs"), res)
    elif kind in ("testbed.repeat", "testbed.compare", "testbed.stress"):
        for r in res["runs"]:
            add((r.get("label", r["variant"]), f"{r['vcpus']} vCPUs"), r)
    elif kind in ("testbed.scale", "testbed.timers"):
        for r in res["runs"]:
            model = (r.get("sched") or {}).get("model", "dedicated")
            add((r.get("label", r["variant"]), f"{r['vcpus']} vCPUs", model), r)
    elif kind == SWEEP:
        for r in res["runs"]:
            sw = r.get("sweep") or {}
            point = " ".join(f"{k}={v}" for k, v in sorted((sw.get("options") or {}).items()) if k != "seed")
            add((point or sw.get("name", r["variant"]), f"{r['vcpus']} vCPUs"), r)
    else:
        raise ResultsError(f"kind {kind}: diff does not know this kind of result")
    return out


def rows(a: dict, b: dict) -> list[dict]:
    """A row per cell in both results: means, B/A, the slowdown's interval and whether it is significant."""
    ca, cb = cells(a), cells(b)
    out = []
    for key in [k for k in ca if k in cb]:
        va, vb = ca[key], cb[key]
        ma, mb = sum(va) / len(va), sum(vb) / len(vb)
        ci = stats.bootstrap_slowdown_ci(va, vb)
        out.append({"key": list(key), "a_ops_per_s": ma, "b_ops_per_s": mb, "ratio": mb / ma if ma > 0 else None,
                    "slowdown_pct": (1 - mb / ma) * 100 if ma > 0 else None, "n": [len(va), len(vb)],
                    "ci_pct": list(ci) if ci else None, "significant": stats.excludes(ci)})
    return out


def main(args) -> int:
    from . import findings, hostinfo, results

    a, b = load(args.a), load(args.b)
    if a["kind"] != b["kind"]:
        raise UsageError(f"{args.a} is a {KINDS.get(a['kind'], a['kind'])} result and {args.b} a "
                         f"{KINDS.get(b['kind'], b['kind'])} one: diff compares two results of one kind")
    if a["kind"] not in KINDS:
        raise UsageError(f"{args.a}: kind {a['kind']}: diff compares run, compare, scale, timers and stress results "
                         "and sweep folders")
    if a["kind"] != SWEEP:
        refused, _ = hostinfo.compare_facts(a.get("host"), b.get("host"))
        problems = results.incomparable(a, b) + refused
        if problems and not args.force:
            raise UsageError(f"{args.a} and {args.b} differ in {'; '.join(problems)}; pass --force to compare anyway")
    if args.max_slowdown is not None and not 0 <= args.max_slowdown < 100:
        raise UsageError(f"--max-slowdown {args.max_slowdown:g}: a percentage from 0 to under 100, e.g. 5")
    table = rows(a, b)
    if not table:
        raise UsageError(f"{args.a} and {args.b} share no (design, vCPUs) cell; nothing to compare")
    kind = KINDS[a["kind"]]
    print(f"testbed diff: {kind} results, A {args.a} (seed {a['seed']}), B {args.b} (seed {b['seed']})")
    for line in host_lines(a, b):
        print(line)
    keyw = max(12, *(len(_key_text(tuple(r["key"]))) for r in table))
    print(f"{'cell':{keyw}} {'A ops/s':>13} {'B ops/s':>13} {'B/A':>7} {'slowdown':>9}  interval (95%)")
    for r in table:
        ratio = f"{r['ratio']:.3f}" if r["ratio"] is not None else "-"
        slow = f"{r['slowdown_pct']:+.2f}%" if r["slowdown_pct"] is not None else "-"
        if r["ci_pct"]:
            note = findings.fmt_ci(r["ci_pct"]) + (" significant" if r["significant"] else " within noise")
        else:
            note = f"too few (n={min(r['n'])})"
        print(f"{_key_text(tuple(r['key'])):{keyw}} {r['a_ops_per_s']:>13,.0f} {r['b_ops_per_s']:>13,.0f} "
              f"{ratio:>7} {slow:>9}  {note}")
    if any(r["ci_pct"] is None for r in table):
        print(f"(too few: not enough repetitions to tell; {stats.MIN_REPEAT} on both sides give an interval)")
    for k in ("verdict",):
        if k in a and k in b and isinstance(a[k], str):
            print(f"checks: A {a[k]}, B {b[k]}")
    return _verdict(table, args.max_slowdown)


def _verdict(table: list[dict], limit: float | None) -> int:
    """The closing line and the exit status: 1 only under --max-slowdown, for a significant excess."""
    sig = [r for r in table if r["significant"]]
    slower = [r for r in sig if r["slowdown_pct"] > 0]
    faster = [r for r in sig if r["slowdown_pct"] < 0]
    n = min(min(r["n"]) for r in table)
    if n < stats.MIN_REPEAT:
        figures = (f"not enough repetitions to tell ({n}; {stats.MIN_REPEAT} on both sides give an interval); "
                   f"B/A from {min(r['ratio'] or 0 for r in table):.3f} to {max(r['ratio'] or 0 for r in table):.3f}")
    else:
        figures = (f"{len(slower)} of {len(table)} rows significantly slower in B, {len(faster)} faster "
                   f"({stats.method()})")
    over = [r for r in slower if limit is not None and r["ci_pct"][0] > limit]
    if limit is not None:
        if over:
            worst = max(over, key=lambda r: r["slowdown_pct"])
            figures += (f"; {len(over)} over --max-slowdown {limit:g}%, worst {_key_text(tuple(worst['key']))} "
                        f"{worst['slowdown_pct']:+.2f}% {[round(x, 2) for x in worst['ci_pct']]}")
        else:
            figures += f"; none significantly over --max-slowdown {limit:g}%"
    word = "FAILURE" if over else "SUCCESS"
    print(f"verdict: {word} ({'B is slower than allowed' if over else 'within the limit' if limit is not None else 'compared'}); "
          f"figures: {figures}")
    return 1 if over else 0


def host_lines(a: dict, b: dict) -> list[str]:
    """The hosts' facts compared, when ``hostinfo`` offers it (the hook named in the module docstring)."""
    from . import hostinfo

    _, flagged = hostinfo.compare_facts(a.get("host"), b.get("host"))
    return [f"note: {line} differs: figures may move with it" for line in flagged]
