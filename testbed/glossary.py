"""Every column and figure the commands print, defined once: ``testbed explain NAME`` prints
the entry, ``docs/results.md`` lists them all (a test keeps the two the same).

Keys are the names as printed; ``ALIASES`` maps the JSON and CSV names to them.
"""

from __future__ import annotations

from .errors import UsageError, did_you_mean

TERMS = {
    # run: the per-vCPU table
    "vcpu": "the vCPU process's number, 0..N-1; its seed is seed + vcpu",
    "cpu": "the host CPU the vCPU process is pinned to (with more vCPUs than CPUs, the last one it ran on)",
    "ops": "operations done in the measured window (after the warm-up): map, access and unmap of one frame; in the "
           "guest and timers workloads, units of guest work. The JSON's all_ops includes the warm-up",
    "ops/s": "ops divided by the measured window's length in seconds",
    "maps": "map calls, warm-up included; in guest and timers each hypercall makes --burst of them, so maps and ops "
            "differ",
    "hash%": "maps answered by the per-vCPU hash of recent mappings, in percent of maps (--wide)",
    "tlb miss": "simulated TLB misses: accesses whose translation was not in the vCPU's TLB and paid --cost-walk",
    "lock cont": "lock acquisitions that found the lock taken and had to wait (warm-up included)",
    "run s": "seconds the vCPU process spent on a CPU, warm-up included",
    "wait s": "seconds the vCPU process was runnable but not on a CPU (the sum of every wait, warm-up included); "
              "'longest single wait for a CPU' is the longest of these waits",
    "switch": "times the hypervisor scheduling model switched the vCPU out (--sched hypervisor; --wide)",
    "starved": "longest time in seconds the watchdog saw the vCPU make no progress",
    "starved s": "scale: the longest time any vCPU of the point made no progress (the run's 'starved', maximum)",
    # run: the summary lines
    "worst map latency per second": "the slowest sampled map in each second of the run (warm-up included), in "
                                    "cycles: a collapse that lasts a second shows here even when the histogram's p99 "
                                    "and the run's max hide it",
    "map latency": "cycles from the start to the end of a map call, sampled 1 in 2**--lat-every maps into a log2 "
                   "histogram; p50<=X is the upper bound of the bin holding the median",
    "checks": "the oracle's counters; any non-zero one makes the run FAILURE (docs/variants.md lists them)",
    "verdict": "the closing line of every command: SUCCESS or FAILURE of the checks, then after 'figures:' what "
               "the measurements say; under stress --inject, whether the injected fault was caught",
    # compare
    "drop": "how much slower a design is than the baseline: (1 - design ops/s / baseline ops/s) x 100, repetition "
            "i of both with seed + i; the table shows the mean over repetitions",
    "interval": "a 95% percentile-bootstrap interval of the mean over repetitions (10,000 resamples, seeded); a "
                "difference is claimed only when the interval excludes 0 (5 repetitions at least)",
    "significant": "true when the interval excludes 0; null when there are too few repetitions to tell",
    "findings": "one line per scope: the designs ordered by drop, and which neighbouring gaps are significant",
    "gap": "how many points more one design drops than the next, the mean of paired per-repetition differences",
    "spread": "compare: the median absolute deviation of the drops (JSON *_spread_pct); scale: half the range of "
              "ops/s over repetitions",
    # scale
    "linear": "n times the one-vCPU ops/s of the same design: what perfect scaling would reach",
    "effic.": "efficiency: ops/s at n vCPUs divided by linear; 1.0 is perfect scaling, below 1/n is a collapse "
              "(fewer ops/s than one vCPU alone)",
    "efficiency": "see 'effic.'",
    "p99 cyc": "the 99th percentile of sampled map latency in cycles (log2 bin upper bound), median over repetitions",
    "handoff cyc": "mean cycles from a lock's release to its next acquisition by a waiting vCPU",
    "fairness": "Jain's index of lock acquisitions across vCPUs: 1 when all took it equally often, 1/n when one took "
                "it every time",
    "sched": "the scheduling model the figures come from: dedicated (a CPU per vCPU), hypervisor or host",
    "sched_model": "CSV: the scheduling model used (dedicated, hypervisor, host); 'sched' is the one asked for "
                   "with --sched (empty: the default)",
    # timers
    "timers set": "single-shot timers the guests armed",
    "-ETIME": "timers whose deadline had passed when armed (the hypercall took longer than --slack-us)",
    "rate": "-ETIME in percent of timers set",
    "worst streak": "the most consecutive -ETIME one guest saw; --panic-streak in a row panic a FreeBSD 10 guest",
    "panics": "guests that reached --panic-streak consecutive -ETIME",
    "mean path us": "mean microseconds of the timer path (deadline, hypercall burst, arm)",
    # diff
    "B/A": "diff: B's mean ops/s divided by A's",
    "slowdown": "diff: (1 - B/A) x 100; positive when B is slower",
}

ALIASES = {"efficiency": "effic.", "p99_cycles": "p99 cyc", "lock_handoff_cycles": "handoff cyc",
           "lock_fairness": "fairness", "starved_max_s": "starved s", "ops_per_s": "ops/s", "drop_pct": "drop",
           "etime": "-ETIME", "worst_streak": "worst streak", "timer_sets": "timers set", "ci_pct": "interval",
           "lock_contended": "lock cont", "tlb_misses": "tlb miss", "run_s": "run s", "wait_s": "wait s",
           "starved_s": "starved", "mean_path_us": "mean path us", "ratio": "B/A", "slowdown_pct": "slowdown"}


def lookup(name: str) -> tuple[str, str]:
    """(the printed name, its definition); UsageError with a suggestion for an unknown one."""
    key = name.strip()
    for candidate in (key, key.lower(), ALIASES.get(key), ALIASES.get(key.lower())):
        if candidate in TERMS:
            return candidate, TERMS[candidate]
    for suffix in ("_pct", "_drop_pct", "_ci_pct", "_significant"):        # single_drop_pct and the like
        for scope in ("single_", "multi_"):
            if key.startswith(scope) and key.endswith(suffix):
                return lookup({"_drop_pct": "drop", "_ci_pct": "interval", "_significant": "significant"}.get(
                    suffix, key[len(scope):]))
    names = list(TERMS) + list(ALIASES)
    raise UsageError(f"explain {name!r}: no such column or figure{did_you_mean(key, names)}; 'testbed explain' "
                     "lists them all (docs/results.md too)")


def main(args) -> int:
    if args.name is None:
        for k, v in TERMS.items():
            print(f"- {k}: {v}")
        print(f"verdict: SUCCESS (nothing to check); figures: {len(TERMS)} columns and figures defined")
        return 0
    name, text = lookup(args.name)
    print(f"- {name}: {text}")
    print("verdict: SUCCESS (nothing to check); figures: defined above")
    return 0
