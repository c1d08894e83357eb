"""The oracle: what a run is checked against, and the verdict.

Checks happen in three places, and this module holds the two that run in Python:

- in the compiled loop (``loops.run_ops``), at every access and before every
  unmap. The access translates the address through the vCPU's TLB and checks
  the frame reached carries the MFN mapped (``stale_translations``). Every held
  mapping is checked again just before it is unmapped: its PTE must still map
  the MFN it was mapped for (``reused_held_slots``) and a translation through
  the TLB must still reach that frame (``held_stale_translations``). The
  kernels only count; this module reads the counters.

  Why once before the unmap is enough for nested walks, rather than every held
  mapping after each new map: a walk unmaps in reverse order, so every map made
  after a mapping is unmapped before it is. A later map that takes a held slot
  writes that slot's PTE for another MFN, and nothing in the walk writes it
  back to the held MFN before the held mapping's own unmap (lockless leaves a
  released slot's PTE as it is; the other designs clear it), so the recheck
  finds it: one check per map instead of a scan of every held mapping after
  every map of the walk. Only another vCPU mapping the same MFN into the same
  slot in between could hide it.
- on the shared state once the vCPUs are quiescent (after the run, and every
  second under ``testbed stress``): the frame-by-frame write count
  (``lost_writes``) and the variant's own invariants (``variant_checks``),
  given the mappings each vCPU still holds, with their MFNs.
- ``checks`` and ``verdict`` turn all of it, with how the run ended, into the
  ``checks`` block of a result and SUCCESS or FAILURE.
"""

from __future__ import annotations

import numpy as np

from . import abi, kernels
from . import variants as registry

CHECK_KEYS = ("stale_translations", "held_stale_translations", "reused_held_slots", "lost_writes", "slot_leaks",
              "refcount_errors", "exhaustion", "invariant_violations", "periodic_violations", "worker_failures",
              "sched_violations", "xen_assertions")
WORKER_FAILURES = ("killed", "stalled", "exited", "start_timeout", "hung")


def live(views, v: int) -> list:
    """The (va, mfn) pairs vCPU ``v`` holds now, as its kernel last listed them (S_LIVE of them)."""
    n = int(views["stats"][v, abi.S_LIVE])
    row = views["live"][v]
    return [(int(row[2 * k]), int(row[2 * k + 1])) for k in range(n)]


def live_mappings(views, n: int) -> dict:
    return {v: live(views, v) for v in range(n)}


def lost_writes(views, cfg) -> tuple[int, int, int]:
    """(writes lost frame by frame, writes the vCPUs report, writes the frames counted)."""
    n = cfg.vcpus
    cols = np.array([kernels.counter_col(v) for v in range(n)])
    actual = views["frames"][:, cols].T                  # (vcpus, frames)
    meant = views["expect"][:n, :cfg.frames]
    return (int(np.maximum(meant - actual, 0).sum()), int(views["stats"][:n, abi.S_WRITES].sum()),
            int(actual.sum()))


def variant_checks(views, cfg, victims=None, module=None) -> dict:
    """The variant's own invariants over the shared state, told which vCPUs were killed.

    A vCPU killed inside an operation leaves that operation half done (a slot
    taken but not yet listed as held, a ticket taken but never served): the
    variant does not count against the design what only the kill explains.
    """
    held = live_mappings(views, cfg.vcpus)
    for v in victims or ():
        # S_LIVE is written after a walk's maps, not after each: a victim may hold any
        # mapping its row lists, up to the deepest walk.
        row = views["live"][v]
        held[v] = [(int(row[2 * k]), int(row[2 * k + 1])) for k in range(row.shape[0] // 2) if row[2 * k] != 0]
    return (module or registry.get(cfg.variant).module).check(views, cfg, held, victims=frozenset(victims or ()))


def quiescent(views, cfg) -> dict:
    """Every check that reads shared state, on a quiescent one: counts by name, and their sum."""
    found = {k: int(v) for k, v in variant_checks(views, cfg).items()}
    lost, written, counted = lost_writes(views, cfg)
    found["lost_writes"] = max(lost, abs(written - counted))
    found["violations"] = sum(found.values())
    return found


# Counters the kernels bump that stop nothing by themselves, and the first moment stress saw one.
KERNEL_VIOLATIONS = (abi.S_STALE, abi.S_HELD_STALE, abi.S_HELD_PTE, abi.S_REFCNT_ERR, abi.S_EXHAUSTED,
                     abi.S_INVARIANT, abi.S_XEN_BUGS)


def kernel_violations(stats, n: int) -> int:
    return int(stats[:n][:, list(KERNEL_VIOLATIONS)].sum())


def checks(*, totals: dict, stats, lost_writes: int, writes_reported: int, writes_counted: int,
           variant_checks: dict, failure: dict | None, extra: dict | None, complete: bool) -> dict:
    """The ``checks`` block of a result: one count per check, and their sum ``violations``."""
    out = {
        "stale_translations": totals["stale_translations"],
        "held_stale_translations": totals["held_stale_translations"],
        "reused_held_slots": totals["reused_held_slots"],
        "lost_writes": int(lost_writes),
        "slot_leaks": int(variant_checks.get("slot_leaks", 0)),
        "refcount_errors": totals["refcount_errors"],
        "exhaustion": totals["exhaustion"],
        "invariant_violations": totals["invariant_violations"] + int(variant_checks.get("invariant_violations", 0)),
        "periodic_violations": int((extra or {}).get("stress", {}).get("periodic_violations", 0)),
        "worker_failures": 1 if failure is not None and failure.get("kind") in WORKER_FAILURES else 0,
        "sched_violations": int(stats[:, abi.S_BAD_SWITCH].sum()),
        "xen_assertions": totals.get("xen_assertions", 0),
    }
    # Frame counters must add up to the writes the vCPUs report; a worker killed
    # mid-operation may have counted a write it never made, so only a complete run is held to it.
    if complete and writes_counted != writes_reported:
        out["lost_writes"] = max(out["lost_writes"], abs(writes_reported - writes_counted))
    out["violations"] = int(sum(out[k] for k in CHECK_KEYS))
    return out


def verdict(checks: dict, failure: dict | None, interrupted: str | None) -> str:
    return "SUCCESS" if checks["violations"] == 0 and failure is None and interrupted is None else "FAILURE"


def partial(checks: dict, failure: dict | None, interrupted: str | None) -> bool:
    """Results are partial when the run was interrupted or a vCPU died or stopped."""
    return interrupted is not None or (failure is not None and checks["worker_failures"] > 0)
