"""What the figures say: the findings lines of ``compare`` and the closing verdict of every command.

A difference is stated only when the data support it (``stats.bootstrap_mean_ci``):
the interval is printed beside each figure, and below ``stats.MIN_REPEAT``
repetitions the text says "not enough repetitions to tell (N)" instead of a claim.

Every command ends with one line in the same shape (locktorture's closing line)::

    verdict: SUCCESS (checks passed in 30 runs); figures: ...

the first word says whether the checks passed, the part after "figures:" what the
measurements say. Under ``stress --inject`` the checks are expected to fail and the
line says whether the injected fault was caught as it must be.
"""

from __future__ import annotations

from . import stats

SCOPES = ("single", "multi")


def scope_name(scope: str, vcpus_multi: int) -> str:
    return "single-core (1 vCPU)" if scope == "single" else f"multi-core ({vcpus_multi} vCPUs)"


def fmt_ci(ci) -> str:
    """``[+1.20, +3.40]``, or the words that say there is none."""
    return f"[{ci[0]:+.2f}, {ci[1]:+.2f}]" if ci else "[no interval]"


def gap(r1: dict, r2: dict, scope: str) -> tuple[float | None, tuple[float, float] | None]:
    """How many points more r2 drops than r1 on ``scope``: the mean of the paired differences
    (repetition i of both ran with seed + i against the same baseline run) and its interval."""
    d1, d2 = r1.get(f"{scope}_drops_pct") or [], r2.get(f"{scope}_drops_pct") or []
    k = min(len(d1), len(d2))
    if not k:
        return None, None
    diffs = [b - a for a, b in zip(d1[:k], d2[:k])]
    return sum(diffs) / k, stats.bootstrap_mean_ci(diffs)


def compare_findings(rows: list[dict], repeat: int, vcpus_multi: int) -> list[str]:
    """One line per scope: the ordering (least drop first) and which neighbouring gaps are significant."""
    out = []
    for scope in SCOPES:
        ranked = sorted((r for r in rows if r.get(f"{scope}_drops_pct")), key=lambda r: r[f"{scope}_mean_drop_pct"])
        if not ranked:
            continue
        n = min(len(r[f"{scope}_drops_pct"]) for r in ranked)
        order = " < ".join(r["variant"] for r in ranked)
        head = f"{scope_name(scope, vcpus_multi)}: least drop first {order}"
        if n < stats.MIN_REPEAT:
            out.append(f"{head}; not enough repetitions to tell ({n}; {stats.MIN_REPEAT} needed): no claim of "
                       "separation")
            continue
        apart, close = [], []
        for better, worse in zip(ranked, ranked[1:]):
            g, ci = gap(better, worse, scope)
            text = f"{worse['variant']} - {better['variant']} {g:+.2f} points {fmt_ci(ci)}"
            (apart if stats.excludes(ci) else close).append(text)
        parts = [head]
        parts.append("significant gaps: " + ("; ".join(apart) if apart else "none"))
        if close:
            parts.append("within noise: " + "; ".join(close))
        out.append("; ".join(parts))
    return out


def compare_figures(rows: list[dict], baseline: str, vcpus_multi: int, repeat: int) -> str:
    """The figures part of compare's verdict: the design that drops most on the multi-core column."""
    scope = "multi"
    ranked = sorted((r for r in rows if r.get(f"{scope}_drops_pct")), key=lambda r: r[f"{scope}_mean_drop_pct"])
    if not ranked:
        return "no cell finished"
    worst = ranked[-1]
    text = (f"{worst['variant']} drops most on {vcpus_multi} vCPUs, {worst[f'{scope}_mean_drop_pct']:+.2f}% "
            f"{fmt_ci(worst[f'{scope}_ci_pct'])} against {baseline}")
    sig = [r["variant"] for r in ranked if r.get(f"{scope}_significant")]
    if worst[f"{scope}_ci_pct"] is None:
        return text + f"; not enough repetitions to tell ({len(worst[f'{scope}_drops_pct'])})"
    return text + (f"; significantly slower than {baseline}: {', '.join(sig)}" if sig
                   else f"; none significantly slower than {baseline}")


def scale_figures(rows: list[dict], repeat: int = 1) -> str:
    """The figures part of scale's verdict: a collapse (fewer ops/s at n vCPUs than on one) if any,
    else the lowest efficiency at the largest count.

    A collapse is claimed when the interval of the rate at n vCPUs lies wholly below the one-vCPU
    rate's; below ``stats.MIN_REPEAT`` repetitions per point the line says it cannot tell.
    """
    if not rows:
        return "no cell finished"
    one = {r["variant"]: r for r in rows if r["vcpus"] == 1}
    collapsed = [r for r in rows if r["vcpus"] > 1 and r["variant"] in one and one[r["variant"]]["ops_per_s"] > 0
                 and r["ops_per_s"] < one[r["variant"]]["ops_per_s"]]
    if collapsed:
        worst = min(collapsed, key=lambda r: r["ops_per_s"] / one[r["variant"]]["ops_per_s"])
        ref = one[worst["variant"]]
        ratio = ref["ops_per_s"] / max(worst["ops_per_s"], 1e-9)
        share = f"1/{ratio:,.0f}" if ratio >= 10 else f"{1 / ratio:.2f}x"
        text = (f"{worst['variant']} collapsed: {worst['ops_per_s']:,.0f} ops/s at {worst['vcpus']} vCPUs "
                f"({worst['sched']}), {share} of one vCPU")
        ci, ci1 = worst.get("ops_per_s_ci"), ref.get("ops_per_s_ci")
        if ci is None or ci1 is None:
            return text + f" (not enough repetitions to tell ({repeat}; {stats.MIN_REPEAT} needed))"
        if ci[1] < ci1[0]:
            return text + f" (intervals {ci[0]:,.0f}..{ci[1]:,.0f} against {ci1[0]:,.0f}..{ci1[1]:,.0f})"
        return text.replace("collapsed:", "may have collapsed:") + " (the intervals overlap: not significant)"
    top = max(r["vcpus"] for r in rows)
    last = [r for r in rows if r["vcpus"] == top]
    low = min(last, key=lambda r: r["efficiency"])
    high = max(last, key=lambda r: r["efficiency"])
    return (f"no collapse; at {top} vCPUs efficiency {high['efficiency']:.2f} ({high['variant']}) down to "
            f"{low['efficiency']:.2f} ({low['variant']})")


def timers_figures(rows: list[dict], panic_streak: int) -> str:
    panicked = [f"{r['variant']} ({r['sched']})" for r in rows if r["panics"]]
    if panicked:
        return f"a FreeBSD 10 guest would panic under {', '.join(panicked)}"
    worst = max(rows, key=lambda r: r["worst_streak"], default=None)
    if worst is None:
        return "no cell finished"
    return (f"no panic; worst -ETIME streak {worst['worst_streak']} of {panic_streak} ({worst['variant']}, "
            f"{worst['sched']})")


def run_figures(res: dict) -> str:
    """The figures part of a run's verdict: its rate and whether any vCPU starved."""
    t, f = res["totals"], res["fairness"]
    text = f"{t['ops_per_s']:,.0f} ops/s on {res['vcpus']} vCPUs"
    if f.get("starvation"):
        text += f"; starvation: the slowest vCPU did {f['min_ops']:,} ops against {f['max_ops']:,}"
    worst = res.get("latency", {}).get("worst_per_s") or []
    if worst:
        text += f"; worst map {max(worst):,} cycles"
    return text


def closing(failed: int, runs: int, figures: str, interrupted: str | None = None) -> str:
    """The one closing line: ``verdict: SUCCESS (checks passed in 30 runs); figures: ...``."""
    word = "FAILURE" if failed else "SUCCESS"
    what = f"checks failed in {failed} of {runs} runs" if failed else f"checks passed in {runs} run" + "s" * (runs != 1)
    if interrupted:
        what += f"; interrupted by {interrupted}, partial"
    return f"verdict: {word} ({what}); figures: {figures}"
