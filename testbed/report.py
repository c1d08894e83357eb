"""Merge a folder of results into one CSV and plots per host and workload.

Every ``testbed.run`` result in the folder (a sweep's cells, or ``testbed run
--json`` files) becomes one CSV row: the file, the verdict, every host field
(``host_*``), every run option, and the measures. A sweep's failure records
become rows with verdict ERROR. Where a group of results differs only in vCPUs
and seed (same host, same other options) and holds a one-vCPU point,
``linear`` is n times the median one-vCPU throughput and ``efficiency`` the
throughput over ``linear``.

Results from different hosts are never merged: the host is part of every
group, each host and workload gets its own plot (throughput and p99 map
latency against vCPUs, one line per design; repetitions of one point are
reduced to their median, on one host only), and the report lists the hosts
it holds. A ``testbed predict --json`` result in the folder gets a plot of its
own: each design's predicted curve beside the points measured.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
from pathlib import Path

from . import stats
from .config import RunConfig
from .errors import UsageError
from .options import check_writable

CONFIG_KEYS = tuple(f.name for f in RunConfig.__dataclass_fields__.values())
HOST_ID = ("hostname", "cpu_model", "physical_cores", "logical_cpus", "kernel")
MEASURES = ("sched_model", "ops", "ops_per_s", "linear", "efficiency", "measured_s", "p50_cycles", "p99_cycles", "max_cycles",
            "lock_contended", "hash_hit_rate", "tlb_misses", "violations", "starvation", "partial")
LEAD = ("host_hostname", "variant", "workload", "vcpus", "sched_model", "seed", "rep", "verdict", "ops_per_s",
        "linear", "efficiency", "p99_cycles")    # the columns a reader looks at first; every other one follows
GROUP_FREE = ("vcpus", "seed")        # what may differ inside one scaling group
CSV_NAME = "report.csv"


def host_id(host: dict) -> tuple:
    return tuple(host.get(k) for k in HOST_ID)


def _load(folder: Path) -> tuple[list[dict], list[dict], list[str]]:
    """(runs, failure records, files skipped with the reason)."""
    from .results import SCHEMA

    runs, failures, skipped = [], [], []
    for path in sorted(folder.glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            skipped.append(f"{path.name}: not complete JSON ({e.__class__.__name__})")
            continue
        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            skipped.append(f"{path.name}: not a schema {SCHEMA} testbed result")
            continue
        if data.get("kind") == "testbed.run" and isinstance(data.get("totals"), dict) and "host" in data:
            if data.get("interrupted"):
                skipped.append(f"{path.name}: an interrupted run")
                continue
            data["_file"] = path.name
            runs.append(data)
        elif data.get("kind") == "testbed.sweep-failure":
            data["_file"] = path.name
            failures.append(data)
        elif data.get("kind") == "testbed.predict":
            continue                          # plotted by itself (``predictions``)
        else:
            skipped.append(f"{path.name}: a {data.get('kind')} result, not a single run")
    return runs, failures, skipped


def _predictions(folder: Path) -> list[dict]:
    """The ``testbed predict --json`` results in the folder, each with its file name."""
    from .results import SCHEMA

    out = []
    for path in sorted(folder.glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue                          # _load names it as skipped
        if isinstance(data, dict) and data.get("schema") == SCHEMA and data.get("kind") == "testbed.predict":
            out.append(dict(data, _file=path.name))
    return out


def _flat_host(host: dict) -> dict:
    out = {}
    for k, v in host.items():
        if k == "packages":
            for p, ver in sorted(v.items()):
                out[f"host_package_{p}"] = ver
        elif k == "facts":
            from .hostinfo import flat_facts

            out.update({f"host_{fk}": fv for fk, fv in flat_facts(v).items()})
        elif isinstance(v, list):
            out[f"host_{k}"] = ",".join(map(str, v))
        else:
            out[f"host_{k}"] = v
    return out


def _scaling_config(run: dict) -> dict:
    """The run's options as a scaling group sees them: the default domain (as many vCPUs as run) grows
    with the sweep, so it reads "vcpus"; a fixed --domain-vcpus is its own group."""
    cfg = dict(run["config"])
    if cfg.get("domain_vcpus") in (None, cfg.get("vcpus")):
        cfg["domain_vcpus"] = "vcpus"
    return cfg


def _group_key(run: dict) -> tuple:
    cfg = _scaling_config(run)
    return (host_id(run["host"]),) + tuple((k, json.dumps(cfg.get(k))) for k in CONFIG_KEYS if k not in GROUP_FREE)


def rows(runs: list[dict], failures: list[dict]) -> list[dict]:
    """One row per result; linear and efficiency where the group has a vCPU sweep with a one-vCPU point."""
    groups: dict = {}
    for r in runs:
        groups.setdefault(_group_key(r), []).append(r)
    one: dict = {}
    for key, members in groups.items():
        counts = {r["vcpus"] for r in members}
        singles = [r["totals"]["ops_per_s"] for r in members if r["vcpus"] == 1]
        if len(counts) > 1 and singles:
            one[key] = stats.median(singles)
    out = []
    for r in runs:
        t, lat = r["totals"], r["latency"]
        base = one.get(_group_key(r))
        linear = r["vcpus"] * base if base else None
        row = {"file": r["_file"], "verdict": r["verdict"],
               "error": (r.get("failure") or {}).get("message", ""), "rep": (r.get("sweep") or {}).get("rep", "")}
        row.update(_flat_host(r["host"]))
        row.update({k: r["config"].get(k) for k in CONFIG_KEYS})
        # the model the run really used: "dedicated" up to the CPUs, whatever --sched asked for
        row.update(sched_model=(r.get("sched") or {}).get("model"), ops=t["ops"], ops_per_s=round(t["ops_per_s"], 1), linear=round(linear, 1) if linear else None,
                   efficiency=float(f"{t['ops_per_s'] / linear:.4g}") if linear else None,
                   measured_s=round(t["measured_s"], 3), p50_cycles=lat["p50"], p99_cycles=lat["p99"],
                   max_cycles=lat["max"], lock_contended=t["lock_contended"],
                   hash_hit_rate=round(t["hash_hit_rate"], 4), tlb_misses=t["tlb_misses"],
                   violations=r["checks"]["violations"], starvation=r["fairness"]["starvation"],
                   partial=r["partial"])
        out.append(row)
    for f in failures:
        sw = f.get("sweep") or {}
        row = {"file": f["_file"], "verdict": "ERROR", "error": f.get("error", ""),
               "rep": sw.get("rep", "")}
        row.update(_flat_host(f.get("host") or {}))
        opts = {k.replace("-", "_"): v for k, v in (sw.get("options") or {}).items()}
        row.update({k: opts.get(k) for k in CONFIG_KEYS})
        out.append(row)
    return out


def write_csv(table: list[dict], path: Path) -> None:
    host_cols = sorted({k for row in table for k in row if k.startswith("host_")},
                       key=lambda k: (k.startswith("host_package_"), k))
    cols = list(dict.fromkeys(list(LEAD) + ["error", "file"] + host_cols + list(CONFIG_KEYS) + list(MEASURES)))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        for row in table:
            w.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in cols})


def _slug(text) -> str:
    return re.sub(r"[^A-Za-z0-9.-]+", "_", str(text)).strip("_") or "x"


def plot_groups(runs: list[dict]) -> dict:
    """(host id, workload) -> scale-plot rows: one line per design (and per other option that varies)."""
    out: dict = {}
    by_plot: dict = {}
    for r in runs:
        if not r["partial"]:
            by_plot.setdefault((host_id(r["host"]), r["workload"]), []).append(r)
    for key, members in by_plot.items():
        cfgs = [_scaling_config(m) for m in members]
        # options that vary within one design (not per-design defaults such as entries) split its line
        varying = [k for k in CONFIG_KEYS if k not in GROUP_FREE + ("variant", "workload")
                   and any(len({json.dumps(c.get(k)) for m, c in zip(members, cfgs) if m["variant"] == v}) > 1
                           for v in {m["variant"] for m in members})]
        points: dict = {}
        for m, c in zip(members, cfgs):
            label = " ".join([m["variant"]] + [f"{k}={c.get(k)}" for k in varying])
            points.setdefault((label, m["vcpus"]), []).append(m)
        lines = {}
        for (label, n), ms in points.items():
            lines.setdefault(label, {})[n] = ms
        plot_rows = []
        for label, by_n in lines.items():
            one = stats.median(r["totals"]["ops_per_s"] for r in by_n[1]) if 1 in by_n else None
            for n in sorted(by_n):
                ms = by_n[n]
                p99 = [r["latency"]["p99"] for r in ms if r["latency"]["p99"] is not None]
                plot_rows.append({"variant": label, "vcpus": n,
                                  "ops_per_s": stats.median(r["totals"]["ops_per_s"] for r in ms),
                                  "linear": n * one if one else float("nan"),
                                  "p99_cycles": stats.median(p99) if p99 else None, "runs": len(ms)})
        seeds = sorted({m["seed"] for m in members})
        out[key] = {"rows": plot_rows, "workload": key[1], "host": members[0]["host"],
                    "seed": ",".join(map(str, seeds)) if len(seeds) <= 4 else f"{seeds[0]}..{seeds[-1]}",
                    "repeats": max(r["runs"] for r in plot_rows)}
    return out


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("dir", help="folder of results (a sweep's --out)")
    ap.add_argument("--out", default=None, help=f"folder for {CSV_NAME} and the plots (default: DIR itself)")


def main(args) -> int:
    from .output import check_folder
    from .plots import predict_plot, scale_plot

    folder = Path(args.dir)
    if not folder.is_dir():
        raise UsageError(f"{folder}: no such folder; give the --out folder of a sweep")
    out = Path(args.out) if args.out else folder
    if args.out:
        check_folder(args.out, "--out")
        if not out.is_dir():
            raise UsageError(f"--out {out}: no such folder; create it or write elsewhere")
    check_writable(str(out / CSV_NAME), "--out")
    runs, failures, skipped = _load(folder)
    predictions = _predictions(folder)
    for pr in predictions:
        path = out / f"predict-{_slug(pr['host'].get('hostname'))}-{_slug(Path(pr['_file']).stem)}.png"
        predict_plot(pr, str(path))
        print(f"predicted curves beside measured points: {path}")
    if not runs and not failures and predictions:
        return 0
    if not runs and not failures:
        raise UsageError(f"{folder}: no testbed run results in it" + (f" ({len(skipped)} files skipped: "
                                                                       f"{skipped[0]})" if skipped else ""))
    for s in skipped:
        print(f"skipped {s}")
    table = rows(runs, failures)
    write_csv(table, out / CSV_NAME)
    hosts: dict = {}
    for r in runs + failures:
        h = r.get("host") or {}
        hosts.setdefault(host_id(h), [h, 0])[1] += 1
    print(f"{len(runs)} results, {len(failures)} failed cells from {len(hosts)} host{'s' if len(hosts) != 1 else ''} "
          "(never merged across hosts):")
    for h, n in hosts.values():
        print(f"  {h.get('hostname')}: {h.get('cpu_model')}, {h.get('physical_cores')} physical cores, "
              f"{h.get('logical_cpus')} logical, kernel {h.get('kernel')}: {n} files")
    print(f"CSV written to {out / CSV_NAME} ({len(table)} rows)")
    for (hid, workload), res in sorted(plot_groups(runs).items(), key=lambda kv: (str(kv[0][0]), kv[0][1])):
        path = out / f"report-{_slug(hid[0])}-{_slug(workload)}.png"
        note = (f"host {hid[0]}; median of {res['repeats']} runs per point" if res["repeats"] > 1
                else f"host {hid[0]}")
        scale_plot(res, str(path), note=note)
        print(f"plot written to {path}")
    bad = sum(1 for row in table if row["verdict"] != "SUCCESS")
    if bad:
        print(f"{bad} of {len(table)} rows are not SUCCESS (see the verdict and error columns)")
    print(f"verdict: {'FAILURE' if bad else 'SUCCESS'} (checks {'failed in ' + str(bad) if bad else 'passed in all'} "
          f"of {len(table)} results); figures: {len(table)} rows merged, the report does not exit on them")
    return 0
