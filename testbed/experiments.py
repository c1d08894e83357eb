"""The experiments users come for, built from repeated runs of the harness.

- ``compare``: the seed's table. Performance drop of each variant against
  the registry's baseline variant on one vCPU and on N vCPUs, same
  workload and seeds: repetition i of every variant runs with seed
  ``seed + i``, and the drop is taken against the baseline repetition with
  that seed. Variants are interleaved inside each repetition, so that slow
  drift of the machine hits them all alike. By default every real design.
- ``scale``: throughput and map latency against the number of vCPUs, with the
  linear line (n times the one-vCPU throughput of the same variant).
- ``timers``: the FreeBSD failure. Guests arm single-shot timers after a
  hypercall that maps pages; -ETIME streaks and panics per variant.

Every experiment takes any registered variants, and ``locks``: each variant
that has a lock runs once per lock named (rows labelled ``variant:lock``).

An experiment stopped by Ctrl-C or SIGTERM keeps what it finished: its result
holds the rows of the cells whose runs all finished and those runs, with
``"partial": true`` and ``"interrupted"`` naming the signal (the run in
progress at the signal is left out).
"""

from __future__ import annotations

import dataclasses
import signal

from . import findings, harness, jitcache, results, stats
from . import variants as registry
from .config import SCHED_MODELS, RunConfig
from .errors import UsageError
from .progress import progress
from .runplan import checked


def series(variants, locks=None) -> list[tuple[str, dict]]:
    """(label, config fields) of each run series: one per variant, or per variant and lock.

    With ``locks`` (a list of --lock names), each variant that has a lock runs
    once per lock, labelled ``variant:lock``; variants without one run once.
    """
    if not locks:
        return [(_label(name), _own_fields(name, registry.spec_fields(name))) for name in variants]
    if not any(registry.get(name).locks for name in variants):
        with_locks = [f"{v.name}: {', '.join(v.locks)}" for v in registry.REAL if v.locks]
        raise UsageError(f"--lock {','.join(locks)}: none of {', '.join(variants)} has a lock; --lock applies to "
                         f"{'; '.join(with_locks)}")
    out = []
    for name in variants:
        if registry.get(name).locks:
            out += [(f"{name}:{lock}", _own_fields(name, {"variant": name, "lock": lock})) for lock in locks]
        else:
            out.append((_label(name), _own_fields(name, registry.spec_fields(name))))
    return out


def _label(name: str) -> str:
    """A series' label: the variant's name, or for ``xen:TREE+PATCH`` its build's (``xen(af01d33+seed)``)."""
    fields = registry.spec_fields(name)
    if fields["variant"] == name:
        return name
    return registry.get(name).module.label(RunConfig(**fields))


def _own_fields(name: str, fields: dict) -> dict:
    """A series' fields, with --dom-layout dropped for a variant that has one layout only: a command
    that runs several variants applies it to those that take it."""
    return fields if registry.get(name).dom_layouts else dict(fields, dom_layout=None)




def plan(configs) -> list[RunConfig]:
    """The plan step: every run of an experiment's grid validated, its vCPUs placed, before the
    first starts (the first bad one raises UsageError); the runs then use these configs as they are.
    The loops they will run are compiled then, all CPUs at once, where the disk cache lacks them."""
    cfgs = [checked(c) for c in configs]
    jitcache.prepare(cfgs)
    return cfgs


def _until_interrupted(loop) -> str | None:
    """Run ``loop()``, which keeps each finished run as it goes; the signal that stopped it, or None.

    SIGTERM stops the experiment as Ctrl-C does, between runs as well as inside
    one (``harness.run`` stops its vCPUs and returns; ``_run`` then raises).
    """
    old = signal.signal(signal.SIGTERM, harness.raise_interrupted)
    try:
        loop()
        return None
    except (KeyboardInterrupt, harness.Interrupted) as e:
        return e.signame if isinstance(e, harness.Interrupted) else "SIGINT"
    finally:
        signal.signal(signal.SIGTERM, old)


def _stopped(interrupted: str | None) -> dict:
    return {"partial": interrupted is not None, "interrupted": interrupted}


def _run(cfg: RunConfig) -> dict:
    """One run of an experiment; a run stopped by Ctrl-C or SIGTERM stops the experiment too."""
    res = harness.run(cfg)
    if res["interrupted"]:
        raise harness.Interrupted(res["interrupted"])
    return res


def _runs(cfgs: list[RunConfig], bar, label: str) -> list[dict]:
    out = []
    for i, cfg in enumerate(cfgs):
        res = _run(cfg)
        out.append(res)
        bar.advance(f"{label} rep {i + 1}/{len(cfgs)}: {res['totals']['ops_per_s']:,.0f} ops/s")
    return out


def _rate(res: dict) -> float:
    return res["totals"]["ops_per_s"]


def _failures(runs) -> list[dict]:
    return [{"variant": r.get("label", r["variant"]), "vcpus": r["vcpus"], "seed": r["seed"], "checks": r["checks"],
             "failure": r["failure"]} for r in runs if r["verdict"] != "SUCCESS"]


def _median_or_none(values):
    values = [x for x in values if x is not None]
    return stats.median(values) if values else None


# The seed's guest: Geekbench in a 32-vCPU domain. compare's single-core column runs one active
# vCPU in a domain this large, its multi-core column every allowed core active in it.
SEED_DOMAIN_VCPUS = 32


def compare_columns(base: RunConfig, vcpus_multi: int) -> dict:
    """Each column of ``compare``: its domain's vCPUs (D), the active ones (A) and how they run.

    D is ``base.domain_vcpus`` or, by default, the seed's 32 (raised to ``vcpus_multi`` when
    that is larger). The D - A idle vCPUs are blocked, as in a guest running one thread: they
    hold state (locked's pool is sized for all D) and take no CPU; the A active ones run one per
    CPU ("dedicated"), or under the scheduling model when A exceeds the allowed CPUs.
    """
    d = base.domain_vcpus if base.domain_vcpus is not None else max(SEED_DOMAIN_VCPUS, vcpus_multi)
    cpus = allowed_cpu_count(base)
    return {scope: {"domain_vcpus": d, "active_vcpus": a,
                    "sched": "dedicated" if a <= cpus else (base.sched or "hypervisor")}
            for scope, a in (("single", 1), ("multi", vcpus_multi))}


def compare(base: RunConfig, variants=None, vcpus_multi: int = 2, repeat: int = 3, locks=None,
            show_progress: bool | None = None) -> dict:
    """Drop of each variant (default: every real design) against the baseline, single-core and multi-core.

    Both columns run in one domain of ``compare_columns``' D vCPUs: 1 active in the single-core
    column, ``vcpus_multi`` in the multi-core one; the rest idle.
    """
    names = [v for v in (variants or registry.DESIGNS) if v != registry.BASELINE]
    todo = [(registry.BASELINE, {"variant": registry.BASELINE})] + series(names, locks)
    runs = [(scope, i, label) for scope in ("single", "multi") for i in range(repeat) for label, _ in todo]
    fields = dict(todo)
    columns = compare_columns(base, vcpus_multi)
    cfgs = plan(dataclasses.replace(base, vcpus=columns[scope]["active_vcpus"],
                                    domain_vcpus=columns[scope]["domain_vcpus"], seed=base.seed + i,
                                    **fields[label]) for scope, i, label in runs)
    cells = {}
    all_runs = []
    total = len(todo) * 2 * repeat

    def loop():
        for (scope, i, label), cfg in zip(runs, cfgs):
            res = _run(cfg)
            res["label"] = label
            cells.setdefault((scope, label), []).append(res)
            all_runs.append(res)
            bar.advance(f"compare {scope} {label} rep {i + 1}/{repeat}")

    with progress(total, "compare", show_progress) as bar:
        interrupted = _until_interrupted(loop)
    rows = []
    for label, fields_ in todo[1:]:
        ran = cells.get(("single", label)) or cells.get(("multi", label)) or []
        # the lock the runs used (the variant's default when --lock named none), not null
        row = {"variant": label, "lock": fields_.get("lock") or (ran[0]["config"].get("lock") if ran else None)}
        for scope in ("single", "multi"):
            # repetition i of a design pairs with the baseline's repetition i (same seed);
            # an interrupted compare pairs the repetitions both finished, or none
            mine, ref = cells.get((scope, label), []), cells.get((scope, registry.BASELINE), [])
            k = min(len(mine), len(ref))
            drops = stats.paired_drops([_rate(r) for r in mine[:k]], [_rate(r) for r in ref[:k]]) if k else []
            row[f"{scope}_drop_pct"] = stats.median(drops) if drops else None
            row[f"{scope}_spread_pct"] = stats.mad(drops) if drops else None
            row[f"{scope}_half_range_pct"] = stats.spread(drops) if drops else None
            row[f"{scope}_drops_pct"] = drops
            # the claim: the bootstrap interval of the mean paired drop excludes 0 (None: too few repetitions)
            ci = stats.bootstrap_mean_ci(drops)
            row[f"{scope}_mean_drop_pct"] = sum(drops) / len(drops) if drops else None
            row[f"{scope}_ci_pct"] = list(ci) if ci else None
            row[f"{scope}_significant"] = stats.excludes(ci)
        mine, ref = cells.get(("single", label), []), cells.get(("single", registry.BASELINE), [])
        extra = [x for x in (extra_cycles_per_map(r, b) for r, b in zip(mine, ref)) if x is not None]
        row["extra_cycles_per_map"] = stats.median(extra) if extra else None
        row["extra_cycles_per_map_spread"] = stats.mad(extra) if extra else None
        rows.append(row)
    baseline = {scope: stats.median(_rate(r) for r in cells[(scope, registry.BASELINE)])
                if cells.get((scope, registry.BASELINE)) else None for scope in ("single", "multi")}
    failures = _failures(all_runs)
    lines = findings.compare_findings(rows, repeat, vcpus_multi)
    return results.envelope(
        "compare", base, {"verdict": "FAILURE" if failures else "SUCCESS",
                          "figures": findings.compare_figures(rows, registry.BASELINE, vcpus_multi, repeat),
                          "findings": lines, "interval": stats.method(), "min_repeat": stats.MIN_REPEAT,
                          "rows": rows, "columns": columns, "xen": xen_modelled(base),
                          "baseline": registry.BASELINE, "vcpus_multi": vcpus_multi, "repeat": repeat,
                          "baseline_ops_per_s": baseline, "failures": failures, "runs": all_runs,
                          **_stopped(interrupted)})


def extra_cycles_per_map(run: dict, ref: dict) -> float | None:
    """Cycles per map a one-vCPU run spends over the baseline's run with the same seed (the cost per map
    ``predict --seed-table`` turns into a map rate); None without maps."""
    t = run["totals"]
    if not t["maps"] or not _rate(run) or not _rate(ref):
        return None
    hz = run["host"]["tsc_hz"]
    return (hz / _rate(run) - hz / _rate(ref)) / (t["maps"] / t["all_ops"])


# The options ``compare --sweep`` takes: every parameter of the cost model.
COST_OPTIONS = ("cost-flush-one", "cost-flush-all", "cost-walk", "cost-refill")


def parse_sweep(text: str) -> tuple[str, list[int]]:
    """``OPTION=v1,v2,...`` of a cost option and non-negative integers; UsageError naming --sweep otherwise."""
    from .errors import UsageError

    option, sep, values = text.partition("=")
    option = option.strip().removeprefix("--")
    if not sep or option not in COST_OPTIONS:
        raise UsageError(f"--sweep {text!r}: name a cost option and its values, OPTION=v1,v2,..., with OPTION one "
                         f"of {', '.join(COST_OPTIONS)}")
    items = [v.strip() for v in values.split(",")]
    if not values.strip() or any(not v for v in items):
        raise UsageError(f"--sweep {text!r}: the list of values for {option} is empty; give e.g. {option}=50,200,800")
    out = []
    for v in items:
        try:
            n = int(v)
        except ValueError:
            raise UsageError(f"--sweep {text!r}: {v!r} is not a whole number of cycles for {option}") from None
        if n < 0:
            raise UsageError(f"--sweep {text!r}: {option} {n} must be 0 or more")
        out.append(n)
    return option, out


def compare_sweep(base: RunConfig, option: str, values: list[int], **kw) -> dict:
    """``compare`` once per value of one cost option; every table, every run and the verdict."""
    field = option.replace("-", "_")
    plan(dataclasses.replace(base, **{field: v}) for v in values)
    tables = []
    for v in values:
        res = compare(dataclasses.replace(base, **{field: v}), **kw)
        res["sweep"] = {"option": option, "value": v}
        tables.append(res)
    rows = [dict(row, sweep_value=t["sweep"]["value"]) for t in tables for row in t["rows"]]
    first = tables[0]
    body = {k: first[k] for k in ("baseline", "vcpus_multi", "repeat", "columns", "xen")}
    body.update({"rows": rows, "sweep": {"option": option, "values": list(values),
                                         "verdict": sweep_verdict(option, values, [t["rows"] for t in tables]),
                                         "tables": [{k: t[k] for k in ("sweep", "config", "rows", "baseline_ops_per_s")}
                                                    for t in tables]},
                 "failures": [f for t in tables for f in t["failures"]], "runs": [r for t in tables for r in t["runs"]]})
    return results.envelope("compare", dataclasses.replace(base, **{field: values[0]}), body)


def _apart(r1: dict, r2: dict, scope: str) -> bool:
    """An ordering of the two designs that this cell can vouch for: the bootstrap interval of their
    paired gap excludes 0 (``findings.gap``; too few repetitions vouch for nothing). Rows without
    per-repetition drops fall back on the spreads: the drops differ by more than the sum of the MADs."""
    if r1.get(f"{scope}_drops_pct") and r2.get(f"{scope}_drops_pct"):
        return bool(stats.excludes(findings.gap(r1, r2, scope)[1]))
    key, skey = f"{scope}_drop_pct", f"{scope}_spread_pct"
    d1, d2, s1, s2 = r1.get(key), r2.get(key), r1.get(skey), r2.get(skey)
    if d1 is None or d2 is None or s1 is None or s2 is None:
        return False
    return abs(d1 - d2) > s1 + s2


def sweep_verdict(option: str, values: list[int], tables: list[list[dict]]) -> list[str]:
    """Per scope, where the ordering of the designs (least drop first) changes along the sweep, if it does.

    A change of order between two designs from one value to the next counts as a flip only when
    at both values the two are apart (``_apart``: their paired gap's interval excludes 0); a change
    inside the noise at either value is reported as such, not as a flip.
    """
    out = []
    for scope in ("single", "multi"):
        key = f"{scope}_drop_pct"
        orders = [[r["variant"] for r in sorted(rows, key=lambda r: r[key])] for rows in tables]
        by_name = [{r["variant"]: r for r in rows} for rows in tables]
        flips, within = [], []
        for i in range(1, len(values)):
            before, after = orders[i - 1], orders[i]
            pairs = [(a, b) for j, a in enumerate(before) for b in before[j + 1:] if after.index(a) > after.index(b)]
            for a, b in pairs:
                r0, r1 = by_name[i - 1], by_name[i]
                text = (f"between {option}={values[i - 1]} and {values[i]}: {a} ahead of {b} "
                        f"({_pm(r0[a], scope)} vs {_pm(r0[b], scope)}), then {b} ahead of {a} "
                        f"({_pm(r1[b], scope)} vs {_pm(r1[a], scope)})")
                if _apart(r0[a], r0[b], scope) and _apart(r1[a], r1[b], scope):
                    flips.append(text)
                else:
                    within.append(text)
        if flips:
            line = f"{scope}-core: the ordering flips " + "; ".join(flips)
            if within:
                line += "; and, within the spreads there (not a flip), " + "; ".join(within)
            out.append(line)
        elif within:
            out.append(f"{scope}-core: no flip beyond the spreads: the ordering changes only within the spreads, "
                       + "; ".join(within))
        else:
            out.append(f"{scope}-core: no flip: the same ordering at every {option} "
                       f"({', '.join(orders[0])}, least drop first)")
    return out


def _pm(row: dict, scope: str) -> str:
    """A row's drop and its spread, e.g. ``+6.00% +/- 0.40``."""
    spread = row.get(f"{scope}_spread_pct")
    return f"{row[f'{scope}_drop_pct']:+.2f}%" + (f" +/- {spread:.2f}" if spread is not None else "")


def allowed_cpu_count(base: RunConfig) -> int:
    from .topology import allowed_cpus, host_topology

    topo = host_topology()
    return len(topo.order(allowed_cpus(topo, base.cpus)))


def default_counts(cores: int) -> list[int]:
    """scale's default vCPU counts: 1, 2, 4, ... up to the number of cores, and the number of cores itself."""
    counts, n = [], 1
    while n < cores:
        counts.append(n)
        n *= 2
    return counts + [cores]


def sched_models(base: RunConfig, n: int, cpus: int) -> list[str]:
    """The scheduling models to run ``n`` vCPUs under: both, unless --sched names one.

    Up to the number of CPUs every vCPU has its own and the model is "dedicated".
    """
    if n <= cpus:
        return ["dedicated"]
    return [base.sched] if base.sched else list(SCHED_MODELS)


def scale(base: RunConfig, variants=None, vcpu_counts=(1, 2), repeat: int = 1, locks=None,
          show_progress: bool | None = None) -> dict:
    """ops/s, linear, efficiency and p99 map latency for each variant (default: all real) and vCPU count.

    vCPU counts beyond the CPUs run under each scheduling model (``sched_models``);
    every row names the model its figures come from.
    """
    counts = sorted(set(vcpu_counts) | {1})
    # one domain for the whole sweep, sized for its largest count: n of its vCPUs active per row
    domain = base.domain_vcpus if base.domain_vcpus is not None else counts[-1]
    cpus = allowed_cpu_count(base)
    todo = series(variants or [v.name for v in registry.REAL], locks)
    cells = [(n, m) for n in counts for m in sched_models(base, n, cpus)]
    grid = [(name, fields, n, model) for name, fields in todo for n, model in cells]
    cfgs = plan(dataclasses.replace(base, vcpus=n, domain_vcpus=domain, sched=None if model == "dedicated" else model,
                                    seed=base.seed + i, **fields) for _, fields, n, model in grid for i in range(repeat))
    rows, all_runs = [], []

    def loop():
        one = None              # each series' first cell is its 1-vCPU one (counts are sorted, 1 first)
        for k, (name, fields, n, model) in enumerate(grid):
            runs = _runs(cfgs[k * repeat:(k + 1) * repeat], bar, f"scale {name} {n} vCPUs ({model})")
            for r in runs:
                r["label"] = name
            all_runs.extend(runs)
            rate = stats.median(_rate(r) for r in runs)
            if n == 1:
                one = rate
            p99 = [r["latency"]["p99"] for r in runs if r["latency"]["p99"] is not None]
            rows.append({
                "variant": name, "lock": fields.get("lock") or runs[0]["config"].get("lock"), "vcpus": n, "domain_vcpus": domain,
                "sched": model, "ops_per_s": rate,
                "spread": stats.spread(_rate(r) for r in runs),
                "linear": n * one, "efficiency": stats.efficiency(rate, one, n),
                "p99_cycles": stats.median(p99) if p99 else None,
                "max_cycles": max(r["latency"]["max"] for r in runs),
                "worst_per_s": [max(col) for col in zip(*(r["latency"].get("worst_per_s") or [] for r in runs))],
                "lock_contended": stats.median(r["totals"]["lock_contended"] for r in runs),
                "lock_handoff_cycles": _median_or_none(r["lock"]["handoff_mean_cycles"] for r in runs
                                                       if r.get("lock")),
                "lock_fairness": _median_or_none(r["lock"]["jain_fairness"] for r in runs if r.get("lock")),
                "starvation": any(r["fairness"]["starvation"] for r in runs),
                "starved_max_s": max((r["fairness"]["starved_max_s"] or 0.0) for r in runs),
                "run_spread": stats.median(r["fairness"]["run_spread"] or 0.0 for r in runs),
                "ops_per_s_ci": list(ci) if (ci := stats.bootstrap_mean_ci(_rate(r) for r in runs)) else None,
                "verdict": "SUCCESS" if all(r["verdict"] == "SUCCESS" for r in runs) else "FAILURE",
            })

    with progress(len(todo) * len(cells) * repeat, "scale", show_progress) as bar:
        interrupted = _until_interrupted(loop)
    failures = _failures(all_runs)
    return results.envelope("scale", base, {"verdict": "FAILURE" if failures else "SUCCESS",
                                            "figures": findings.scale_figures(rows, repeat),
                                            "interval": stats.method(), "rows": rows, "repeat": repeat, "vcpu_counts": counts, "cpus": cpus,
                                            "domain_vcpus": domain, "xen": xen_modelled(base),
                                            "failures": failures, "runs": all_runs,
                                            **_stopped(interrupted)})


def xen_modelled(cfg: RunConfig) -> dict:
    """Which Xen (and guest) behaviour a result models, in words (docs/fidelity.md has the sources)."""
    from .config import SSHOT_FUTURE

    out = {"domain": "a domain of --domain-vcpus vCPUs (max_vcpus), --vcpus of them active, the others blocked "
                     "idle; locked's pool is max_vcpus * MAPCACHE_VCPU_ENTRIES (mapcache_domain_init)",
           "tlb_clock": "release build: the 32-bit TLB clock wraps at 2**32 (WRAP_MASK 0xFFFFFFFF)"}
    if cfg.workload == "timers":
        out["timers"] = (f"FreeBSD 10.4 xentimer_et_start (slack {cfg.slack_us:g} us, panic after "
                         f"{cfg.panic_streak} consecutive -ETIME); VCPU_SSHOTTMR_future {cfg.sshot_future}: "
                         f"{SSHOT_FUTURE.get(cfg.sshot_future, '?')}")
    return out


def timers(base: RunConfig, variants=None, locks=None, show_progress: bool | None = None) -> dict:
    """-ETIME rate, worst streak and panics of each variant (default: every real design) under the timers workload."""
    base = dataclasses.replace(base, workload="timers")
    todo = series(variants or registry.DESIGNS, locks)
    models = sched_models(base, base.vcpus, allowed_cpu_count(base))
    grid = [(name, fields, model) for model in models for name, fields in todo]
    cfgs = plan(dataclasses.replace(base, sched=None if model == "dedicated" else model, **fields)
                for _, fields, model in grid)
    rows, all_runs = [], []

    def loop():
        for (name, _, model), cfg in zip(grid, cfgs):
            res = _run(cfg)
            res["label"] = name
            all_runs.append(res)
            t = res["totals"]
            sets = t["timer_sets"]
            rows.append({
                "variant": name, "sched": model, "timer_sets": sets, "etime": t["etime"],
                "etime_rate": t["etime"] / sets if sets else 0.0,
                "worst_streak": t["etime_streak_max"], "panics": t["panics"], "late": t["timer_late"],
                "mean_path_us": (t["timer_path_cycles"] / sets / res["host"]["tsc_hz"] * 1e6) if sets else None,
                "guest_work_per_s": t["ops_per_s"], "verdict": res["verdict"],
            })
            bar.advance(f"timers {name} ({model}): {t['panics']} panics")

    with progress(len(todo) * len(models), "timers", show_progress) as bar:
        interrupted = _until_interrupted(loop)
    failures = _failures(all_runs)
    return results.envelope("timers", base, {"verdict": "FAILURE" if failures else "SUCCESS",
                                             "figures": findings.timers_figures(rows, base.panic_streak),
                                             "rows": rows, "panic_streak": base.panic_streak,
                                             "slack_us": base.slack_us, "sshot_future": base.sshot_future,
                                             "domain_vcpus": base.domain_vcpus or base.vcpus,
                                             "xen": xen_modelled(base), "failures": failures,
                                             "runs": all_runs, **_stopped(interrupted)})
