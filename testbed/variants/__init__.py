"""The registry of mapcache variants.

A variant is one module (style.md, 1) exposing ``NAME``, ``VID``,
``DESCRIPTION``, ``DEFAULT_ENTRIES``, ``state_shape(cfg)``, ``init_state(views,
cfg)``, compiled ``map_page`` / ``unmap_page``, and ``check(views, cfg, live)``.
The compiled dispatch on ``VID`` lives in ``testbed.kernels``; this table is
the only place that knows variants by name. A negative control is a real
variant run with fault bits that break it on purpose; it is selectable by name
but never part of a default run.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType

from . import directmap, locked, lockless


@dataclass(frozen=True)
class Variant:
    name: str
    module: ModuleType
    fault: int = 0
    description: str = ""
    control: bool = False        # a negative control: broken on purpose, must be caught
    catches: tuple[str, ...] = ()  # the checks expected to catch a control

    @property
    def vid(self) -> int:
        return self.module.VID


REAL = (
    Variant(directmap.NAME, directmap, description=directmap.DESCRIPTION),
    Variant(locked.NAME, locked, description=locked.DESCRIPTION),
    Variant(lockless.NAME, lockless, description=lockless.DESCRIPTION),
)
CONTROLS = (
    Variant("locked-nolock", locked, locked.FAULT_NO_LOCK,
            "negative control: locked with the lock left out", True,
            ("stale_translations", "lost_writes", "invariant_violations")),
    Variant("locked-noflush", locked, locked.FAULT_NO_EPOCH_FLUSH,
            "negative control: locked without the lazy flush after a wrap", True, ("stale_translations",)),
    Variant("lockless-noflush", lockless, lockless.FAULT_NO_FLUSH,
            "negative control: lockless without the invlpg on slot reuse", True, ("stale_translations",)),
)
VARIANTS = {v.name: v for v in REAL + CONTROLS}
MODULES = tuple(v.module for v in REAL)


def get(name: str) -> Variant:
    from ..errors import UsageError

    try:
        return VARIANTS[name]
    except KeyError:
        raise UsageError(
            f"unknown variant {name!r}; choose one of: {', '.join(VARIANTS)} (see 'testbed variants')"
        ) from None
