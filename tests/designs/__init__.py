"""Each design's test side: ``tests/designs/<module>.py``, one per module of the registry.

A design is three files and a registry line: its numba module
(``testbed/variants/<module>.py``), its C map and unmap
(``testbed/csrc/variants/<module>.h``) and the file here, which holds what the
differential tests need of it and nothing the tests share:

- ``Model``: its plain-Python sequential reference model, written from the design
  (docs/variants.md), not from the compiled code: ``Model(vcpus, entries,
  hash_entries)``, ``map(vcpu, mfn)`` -> the global slot (``mfn - MAPCACHE_VA``
  for a direct-map address), ``unmap(vcpu, slot)``, ``leaks(live)``; it raises
  tests/model.py's errors instead of returning a status.
- ``model_state(model)`` and ``compiled_state(c)``: the same dict of plain values
  from each side (``c`` has ``cfg`` and ``views``: a test's private arena).
- ``corruptions(model, c, live, rng)``: ``(what, mutate(views), metric)`` for what
  the state allows; the design's ``check`` must see ``metric`` grow on the mutated copy.
- ``summary(model)``: the model's totals the seeded sequences must exercise.
- ``GEOMS``: ``[(Geom, events)]``, the geometries of the seeded sequences and the
  events (summary keys) the seeds together must reach there; ``FILL``: the
  geometries filled to exhaustion; ``IRQ_GEOM``: where tests/test_irq.py runs it.
- ``PER_VCPU``: its slots are ``vcpu * entries + idx``, never shared.

Optional (defaults from ``OPTIONAL`` below): ``LIFO`` (it releases only its last
mapping), ``MAY_LEAK`` (its model leaks by design: the seed's lockless),
``SKIP`` (``{fault bit name: state keys}``: what a negative control with that
fault leaves unlike the model on purpose, a control whose faults are all named
there keeping the model's state while its TLB goes stale), ``STALE_GEOM`` (where
those controls run), ``check_totals(tot)`` (what the sequences' totals must
satisfy), ``RUN_OPTIONS`` (``{workload: RunConfig fields}`` a full run of the
design needs) and ``check_run(totals)`` (what a passing full run's totals show).

``adapter(module)`` loads the file of a registry module and fills the defaults;
``missing()`` names the registered designs without one (tests/test_variants.py
fails on any).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from testbed import abi, tlb

HERE = Path(__file__).resolve().parent
VA = abi.MAPCACHE_VA
PRESENT = int(tlb.PTE_PRESENT)
REQUIRED = ("Model", "model_state", "compiled_state", "corruptions", "summary", "GEOMS", "FILL", "IRQ_GEOM",
            "PER_VCPU")


@dataclass(frozen=True)
class Geom:
    vcpus: int
    entries: int
    hash: int
    levels: int = 1
    unchecked: bool = False
    tlb_entries: int = 64
    tlb_ways: int = 4

    def __str__(self):
        s = f"Geom(vcpus={self.vcpus}, entries={self.entries}, hash={self.hash}, levels={self.levels}"
        if self.unchecked:
            s += ", unchecked=True"
        if (self.tlb_entries, self.tlb_ways) != (64, 4):
            s += f", tlb_entries={self.tlb_entries}, tlb_ways={self.tlb_ways}"
        return s + ")"


def check_totals(tot: dict) -> None:
    """Default: the events in GEOMS say all."""


def check_run(totals: dict) -> None:
    """Default: a passing run's checks say all."""


OPTIONAL = {"LIFO": False, "MAY_LEAK": False, "SKIP": {}, "STALE_GEOM": None, "check_totals": check_totals,
            "RUN_OPTIONS": {}, "check_run": check_run}


class AdapterError(TypeError):
    """A design's test file that lacks what the differential tests need."""


def module_name(module) -> str:
    return module.__name__.rsplit(".", 1)[1]


def path_of(module) -> Path:
    return HERE / f"{module_name(module)}.py"


def adapter(module):
    """The test side of a registry module (``tests/designs/<module>.py``), its optional names filled in."""
    a = importlib.import_module(f"{__name__}.{module_name(module)}")
    lacks = [n for n in REQUIRED if not hasattr(a, n)]
    if lacks:
        raise AdapterError(f"{path_of(module)} lacks {', '.join(lacks)} (see tests/designs/__init__.py)")
    for name, default in OPTIONAL.items():
        if not hasattr(a, name):
            setattr(a, name, default)
    return a


def missing(modules) -> list[str]:
    """The modules of ``modules`` whose test file is absent."""
    return [module_name(m) for m in modules if not path_of(m).is_file()]


def skipped(variant) -> set:
    """The state keys a registry entry leaves unlike its model on purpose (its fault bits' SKIP)."""
    a = adapter(variant.module)
    return {k for bit, keys in a.SKIP.items() if variant.fault & getattr(variant.module, bit) for k in keys}


def keeps_model_state(variant) -> bool:
    """A control whose every fault bit is in its design's SKIP: the model's state, a stale TLB."""
    a = adapter(variant.module)
    covered = 0
    for bit in a.SKIP:
        covered |= getattr(variant.module, bit)
    return variant.control and variant.fault != 0 and not variant.options and variant.fault & ~covered == 0


# --- state helpers the adapters share -------------------------------------------------------


def bits(words, base, n):
    return [bool((int(words[base + i // 64]) >> (i % 64)) & 1) for i in range(n)]


def tail_clear(words, base, n):
    """The bits past the last slot in a bitmap's last word are never set."""
    if n % 64 == 0:
        return True
    return (int(words[base + n // 64]) >> (n % 64)) == 0


def stat(c, col):
    return [int(c.views["stats"][v, col]) for v in range(c.cfg.vcpus)]


# the models' names for the compiled run's per-vCPU counters: one table, so that one name reads
# the same stats column in every design's state
COUNTER_COLS = {"flush_one": abi.S_FLUSH_ONE, "flush_all": abi.S_FLUSH_ALL, "hash_hits": abi.S_HASH_HITS,
                "exhaustions": abi.S_EXHAUSTED, "refcount_errors": abi.S_REFCNT_ERR,
                "lock_acquisitions": abi.S_LOCK_ACQ, "harvests": abi.S_HARVEST,
                "epoch_flushes": abi.S_EPOCH_FLUSH, "bug_on_present": abi.S_INVARIANT}


def counters(c, *names) -> dict:
    """The compiled run's counters ``names`` (keys of COUNTER_COLS), each a list per vCPU."""
    return {n: stat(c, COUNTER_COLS[n]) for n in names}


def pte_words(ptes):
    return [0 if m is None else (m | PRESENT) for m in ptes]


def set_bit(words, base, i, on):
    w = base + i // 64
    mask = np.int64(1) << np.int64(i % 64)
    words[w] = (words[w] | mask) if on else (words[w] & ~mask)
