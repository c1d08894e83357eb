"""The registry of mapcache variants: the only place that knows variants by name.

A design is one module in this package (the contract: ``contract.py``), its C
map and unmap (``csrc/variants/<module>.h``), its reference model and test
adapter (``tests/designs/<module>.py``) and one ``real(...)`` line below (how
to write them: docs/variants.md). A negative
control is a real variant run with fault bits that break it on purpose (or with
run options under which the real design is wrong), and the checks that must
catch it; it is one ``control(...)`` line, selectable by name but never part of
a default run. A control that shows its fault only under some run options (a
nested workload, say) lists them: ``testbed variants --json`` prints them, and
``scripts/detection.py`` and the tests run it with them.

Variant ids come from this table: the n-th distinct module listed has id n.
The compiled dispatch on that id (``dispatch.py``) and the C port's table of
designs (``testbed.native.designs_header``) are generated from the table, so a
module listed here is reachable from the kernels and the C loop with no other
edit, and an id the table does not know runs nothing (``abi.ST_BAD_VARIANT``).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType

from .contract import complete


@dataclass(frozen=True)
class Variant:
    name: str
    module: ModuleType
    fault: int = 0
    description: str = ""
    control: bool = False          # a negative control: broken on purpose, must be caught
    catches: tuple[str, ...] = ()  # the checks expected to catch a control
    baseline: bool = False         # the floor every other variant is measured against
    options: tuple = ()            # a control: (RunConfig field, value) pairs it needs to show its fault

    @property
    def cli_options(self) -> list[str]:
        """``options`` as ``testbed run`` arguments."""
        out = []
        for key, value in self.options:
            out += [f"--{key.replace('_', '-')}", str(value)]
        return out

    @property
    def vid(self) -> int:
        return MODULES.index(self.module) if self.module in MODULES else self.module.VID

    @property
    def kind(self) -> str:
        """'design', 'control', or 'xen' (a tree's own code, apart from the transcriptions)."""
        return "xen" if self.module is XEN.module else "control" if self.control else "design"

    @property
    def locks(self) -> tuple[str, ...]:
        return self.module.LOCKS

    @property
    def dom_layouts(self) -> tuple[str, ...]:
        return self.module.DOM_LAYOUTS


def _module(name: str) -> ModuleType:
    return complete(importlib.import_module(f"{__name__}.{name}"))


def real(module: str, baseline: bool = False) -> Variant:
    """A design, by its module's name in this package; its name and description come from the module."""
    m = _module(module)
    return Variant(m.NAME, m, description=m.DESCRIPTION, baseline=baseline)


def control(name: str, module: str, fault: str | None, description: str, catches: tuple[str, ...],
            **options) -> Variant:
    """A negative control: ``module`` run with its fault bit ``fault`` (None: none, the options break it),
    caught by one of ``catches``, under the run options ``options`` (RunConfig fields)."""
    m = _module(module)
    return Variant(name, m, getattr(m, fault) if fault else 0, f"negative control: {description}", True, catches,
                   options=tuple(options.items()))


TABLE = (
    real("directmap", baseline=True),
    real("locked"),
    real("lockless"),
    real("percpu"),
    real("kmap_local"),
    control("locked-nolock", "locked", "FAULT_NO_LOCK", "locked with the lock left out",
            ("stale_translations", "lost_writes", "invariant_violations")),
    control("locked-noflush", "locked", "FAULT_NO_EPOCH_FLUSH", "locked without the lazy flush after a wrap",
            ("stale_translations",)),
    control("lockless-noflush", "lockless", "FAULT_NO_FLUSH", "lockless without the invlpg on slot reuse",
            ("stale_translations",)),
    control("percpu-noflush", "percpu", "FAULT_NO_FLUSH", "percpu without the batched flush at a wrap",
            ("stale_translations",)),
    control("percpu-eager", "percpu", "FAULT_EAGER_REUSE",
            "percpu reusing a released slot at once, without garbage or flush", ("stale_translations",)),
    control("kmap-local-noflush", "kmap_local", "FAULT_NO_FLUSH", "kmap-local without the invlpg on unmap",
            ("stale_translations",)),
    control("lockless-free-held", "lockless", "FAULT_FREE_HELD",
            "lockless freeing the bucket's old slot at refcount 1, while a mapping still holds it",
            ("reused_held_slots",), workload="ptwalk"),
    control("locked-garbage-held", "locked", "FAULT_GARBAGE_HELD",
            "locked putting a held slot on the garbage list (a busy bucket's slot replaced at unmap)",
            ("reused_held_slots",), workload="ptwalk", nest=8),
    control("locked-garbage-pte", "locked", "FAULT_GARBAGE_PTE",
            "locked putting slots on the garbage list without clearing their PTE", ("invariant_violations",)),
    control("lockless-noirqsave", "lockless", "FAULT_NO_IRQSAVE",
            "lockless without local_irq_save: an interrupt inside map takes the slot being mapped",
            ("stale_translations", "invariant_violations", "slot_leaks"), irq_rate=10000),
    control("lockless-wrap", "lockless", None,
            "the seed's 8-bit refcount wrapping silently under one MFN nested 256 deep",
            ("held_stale_translations", "reused_held_slots"), workload="nest-same", nest=256,
            refcount_wrap="wrap"),
)

VARIANTS = {v.name: v for v in TABLE}
if len(VARIANTS) != len(TABLE):
    raise ValueError("two registry lines give the same variant name")
# A Xen tree's own domain_page.c (--variant xen --xen-tree DIR, or xen:DIR+PATCH in a list): one
# entry, apart from the table (no numba id, no default run); its module builds and runs the tree.
XEN = real("xen")
VARIANTS[XEN.name] = XEN
REAL = tuple(v for v in TABLE if not v.control)
CONTROLS = tuple(v for v in TABLE if v.control)
MODULES = tuple(dict.fromkeys(v.module for v in TABLE))    # distinct, in table order: index = variant id
BASELINE = next(v.name for v in REAL if v.baseline)
DESIGNS = tuple(v.name for v in REAL if not v.baseline)     # what compare measures against the baseline


def get(name: str) -> Variant:
    from ..errors import UsageError, did_you_mean

    if name.startswith("xen:"):
        return XEN
    try:
        return VARIANTS[name]
    except KeyError:
        raise UsageError(
            f"unknown variant {name!r}{did_you_mean(name, VARIANTS)}; choose one of: {', '.join(VARIANTS)} "
            "(see 'testbed variants')"
        ) from None


def names(text: str, option: str = "--variants") -> list[str]:
    """A comma-separated list of registered variant names, checked; UsageError otherwise."""
    from ..errors import UsageError

    out = [x.strip() for x in text.split(",") if x.strip()]
    if not out:
        raise UsageError(f"{option} is empty; name at least one variant, e.g. {','.join(DESIGNS[:2])}")
    for name in out:
        get(name)
        if name.startswith("xen:"):
            XEN.module.spec(name)
    return out


def spec_fields(name: str) -> dict:
    """The config fields of a variant name: ``xen:TREE+PATCH`` -> variant xen, its tree and patches."""
    if name.startswith("xen:"):
        tree, patches = XEN.module.spec(name)
        return {"variant": "xen", "xen_tree": tree, "xen_patches": patches}
    return {"variant": name}
