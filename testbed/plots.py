"""Pictures of a scale sweep (matplotlib, drawn off-screen)."""

from __future__ import annotations


def scale_plot(res: dict, path: str, note: str | None = None) -> None:
    """Throughput and p99 map latency against vCPUs, one line per row["variant"]; ``note`` heads the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = res["rows"]
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    models = [m for m in ("hypervisor", "host") if any(r.get("sched") == m for r in rows)] or [None]
    styles = {"hypervisor": "-", "host": ":", None: "-"}
    # lines that coincide stay visible: each design its own hollow marker, and its points nudged
    # sideways by a few percent of a doubling (the x axis is log2; the ticks stay on the counts)
    markers = "osD^vP*X<>"
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 6))
    for i, name in enumerate(variants):
        color = f"C{i}"
        nudge = 2 ** (0.03 * (i - (len(variants) - 1) / 2))
        mark = dict(marker=markers[i % len(markers)], markerfacecolor="none", markersize=6 + 1.5 * (i % 3))
        mine = [r for r in rows if r["variant"] == name]
        for model in models:
            # a line per model: the shared points (vCPUs <= CPUs, "dedicated") start every line
            rs = sorted((r for r in mine if r.get("sched") in ("dedicated", model)), key=lambda r: r["vcpus"])
            x = [r["vcpus"] for r in rs]
            label = name if model is None else f"{name} ({model})"
            ax1.plot([v * nudge for v in x], [max(r["ops_per_s"], 1.0) for r in rs], styles[model], color=color,
                     label=label, **mark)
            p99 = [(r["vcpus"], r["p99_cycles"]) for r in rs if r["p99_cycles"]]
            if p99:
                ax2.plot([a * nudge for a, _ in p99], [b for _, b in p99], styles[model], color=color, label=label,
                         **mark)
        rs = sorted((r for r in mine if r.get("sched") in ("dedicated", models[0])), key=lambda r: r["vcpus"])
        ax1.plot([r["vcpus"] for r in rs], [r["linear"] for r in rs], "--", color=color, alpha=0.4,
                 label=f"{name} linear")
    cores = res["host"]["physical_cores"]
    ticks = sorted({r["vcpus"] for r in rows})
    for ax in (ax1, ax2):
        ax.set_xlabel("vCPUs (log scale)")
        ax.set_xscale("log", base=2)
        ax.set_xticks(ticks)
        ax.set_xticklabels([str(t) for t in ticks])
        ax.minorticks_off()
        ax.axvline(cores, color="grey", linestyle=":", linewidth=1)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, ncol=2, loc="upper center", bbox_to_anchor=(0.5, -0.14))
    ax1.set_ylabel("operations / s (log scale)")
    ax1.set_yscale("log")
    ax1.set_title(f"Throughput ({res['workload']} workload)"
                  + ("\npast the dotted line: solid hypervisor, dotted host scheduling" if models[0] else ""),
                  fontsize=9)
    ax2.set_ylabel("p99 map latency (cycles, log2 bin upper bound)")
    ax2.set_yscale("log", base=2)
    ax2.set_title("Tail latency of map")
    fig.suptitle((f"{note}; " if note else "") + f"{res['host']['cpu_model']}, {cores} physical cores (dotted line: more vCPUs share cores); "
                 f"seed {res['seed']}; dashed: linear from one vCPU", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def predict_plot(res: dict, path: str) -> None:
    """``testbed predict``: each design's predicted throughput from 1 to N pCPUs (lines) beside the points
    measured (filled: checks; hollow: used by the fit)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 6))
    for i, d in enumerate(res["designs"]):
        color = f"C{i % 10}"
        curve = d["curve_all"]
        ax.plot(range(1, len(curve) + 1), [max(x, 1.0) for x in curve], "-", color=color, label=d["design"])
        for p in d["points"]:
            ax.plot([p["pcpus"]], [max(p["measured"], 1.0)], "o", color=color,
                    markerfacecolor="none" if p["fit"] else color)
    last = max(res["counts"])
    ax.axvline(last, color="grey", linestyle=":", linewidth=1)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("pCPUs (log scale)")
    ax.set_ylabel("operations / s (log scale)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    h = res["host"]
    ax.set_title(f"predicted (lines) and measured (circles; hollow: used by the fit), {res['workload']} workload\n"
                 f"{h.get('hostname')}: {h.get('cpu_model')}; unvalidated beyond {last} pCPUs (dotted line)",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
