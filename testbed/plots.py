"""Pictures of a scale sweep (matplotlib, drawn off-screen)."""

from __future__ import annotations


def scale_plot(res: dict, path: str, note: str | None = None) -> None:
    """Throughput and p99 map latency against vCPUs, one line per row["variant"]; ``note`` heads the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = res["rows"]
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.5))
    for i, name in enumerate(variants):
        rs = sorted((r for r in rows if r["variant"] == name), key=lambda r: r["vcpus"])
        x = [r["vcpus"] for r in rs]
        color = f"C{i}"
        ax1.plot(x, [max(r["ops_per_s"], 1.0) for r in rs], "o-", color=color, label=name)
        ax1.plot(x, [r["linear"] for r in rs], "--", color=color, alpha=0.5, label=f"{name} linear")
        p99 = [(r["vcpus"], r["p99_cycles"]) for r in rs if r["p99_cycles"]]
        if p99:
            ax2.plot([a for a, _ in p99], [b for _, b in p99], "o-", color=color, label=name)
    cores = res["host"]["physical_cores"]
    ticks = sorted({r["vcpus"] for r in rows})
    for ax in (ax1, ax2):
        ax.set_xlabel("vCPUs")
        ax.set_xticks(ticks)
        ax.axvline(cores, color="grey", linestyle=":", linewidth=1)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    ax1.set_ylabel("operations / s (log scale)")
    ax1.set_yscale("log")
    ax1.set_title(f"Throughput ({res['workload']} workload)")
    ax2.set_ylabel("p99 map latency (cycles, log2 bin upper bound)")
    ax2.set_yscale("log", base=2)
    ax2.set_title("Tail latency of map")
    fig.suptitle((f"{note}; " if note else "") + f"{res['host']['cpu_model']}, {cores} physical cores (dotted line: more vCPUs share cores); "
                 f"seed {res['seed']}; dashed: linear from one vCPU", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
