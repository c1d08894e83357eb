"""The operation loop in C (``csrc/testbed_op.c``), built and loaded on demand.

The C port is the yardstick for ``loops.run_ops``: the same work without
numba, on the same arrays. ``load()`` compiles it with the system C compiler
into a private temporary directory (nothing is written into the source tree)
and returns a callable with ``run_ops``'s signature. ``scripts/bench.py
--vs-c`` times the two side by side; ``tests/test_native.py`` checks that they
leave the same counters.

The port names no design: each design's map and unmap is its own file,
``csrc/variants/<module>.h``, and the table that includes and numbers them
(``testbed_designs.h``) is written here from the registry (``designs_header``),
beside the build, as ``variants/dispatch.py`` writes the numba dispatch. So a
registry line is the whole of adding a design to the C side too. A native kind
(``NATIVE``: ``xen``) has no file of its own here: its entry is compiled in only
under its build flag (``TESTBED_XEN``), by the build that supplies its C
(testbed/xen.py). The lock and domain-layout indices are locked's, written in
its C by hand; ``Native`` refuses a port whose names disagree with the registry
(``locked.LOCKS``, ``locked.DOM_LAYOUTS``), so that an index never runs another
lock in C.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from . import tlb

CSRC = Path(__file__).resolve().parent / "csrc"
SOURCE = CSRC / "testbed_op.c"
DESIGNS_H = "testbed_designs.h"       # generated: designs_header()
COMMON = ("testbed_op.c", "ticket_lock.h", "locks.h")   # the port's own files, apart from the designs'
CFLAGS = ("-O2", "-march=native", "-fPIC", "-shared")

_i64 = ctypes.c_int64
_ptr = ctypes.c_void_p


class NoCompiler(RuntimeError):
    """No C compiler on this host (or it cannot build the port)."""


class OutOfStep(RuntimeError):
    """The C port numbers the variants or locks otherwise than the registry."""


def compiler() -> str | None:
    """The C compiler to use: $CC, else cc, gcc or clang on the PATH; None if there is none."""
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def compiler_version(cc: str) -> str:
    out = subprocess.run([cc, "--version"], capture_output=True, text=True).stdout
    return out.splitlines()[0] if out else cc


class Native:
    """The C ``run_ops``, loaded from a shared object built in a temporary directory."""

    def __init__(self, cc: str | None = None, lib: str | None = None):
        """Build the port; or, with ``lib``, load a shared object built from it already (testbed.xen's)."""
        self._dir = None
        if lib is None:
            cc = cc or compiler()
            if cc is None:
                raise NoCompiler("no C compiler found (looked for $CC, cc, gcc, clang)")
            self.cc = cc
            self._dir = tempfile.TemporaryDirectory(prefix="testbed-native-")
            lib = os.path.join(self._dir.name, "testbed_op.so")
            Path(self._dir.name, DESIGNS_H).write_text(designs_header())
            res = subprocess.run([cc, *CFLAGS, f"-I{self._dir.name}", f"-I{CSRC}", str(SOURCE), "-o", lib],
                                 capture_output=True, text=True)
            if res.returncode != 0:
                self._dir.cleanup()
                raise NoCompiler(f"{cc} could not build {SOURCE.name}: {res.stderr.strip().splitlines()[-1:]}")
        self._lib = ctypes.CDLL(lib)
        for symbol, want in (("testbed_variants", variant_names()), ("testbed_locks", lock_names()),
                             ("testbed_dom_layouts", dom_layout_names())):
            have = ctypes.string_at(ctypes.addressof(ctypes.c_char.in_dll(self._lib, symbol))).decode()
            if have != want:
                self.close()
                raise OutOfStep(f"{SOURCE.name} numbers its {symbol[8:]} {have!r}, the registry {want!r}: "
                                 "port the change to the C file")
        fn = self._lib.testbed_run_ops
        fn.restype = _i64
        fn.argtypes = [_i64, _i64, _ptr, _ptr, _ptr, _ptr, _ptr, _i64, _ptr, _i64, _ptr, _i64, _ptr, _i64,
                       _ptr, _i64, _ptr, _i64, _ptr, _i64, _ptr]
        self._fn = fn

    def bind(self, p, dom, pte, dbits, vst, frames, expect, stats, hist, live, tlbv, rng):
        """A function ``f(n, vcpu) -> status`` that runs the C loop on these arrays (kernel_args order)."""
        for name, a in (("p", p), ("dom", dom), ("pte", pte), ("dbits", dbits), ("tlb", tlbv), ("rng", rng)):
            _check(name, a, 1)
        for name, a in (("vst", vst), ("frames", frames), ("expect", expect), ("stats", stats), ("hist", hist),
                        ("live", live)):
            _check(name, a, 2)
        keep = (p, dom, pte, dbits, vst, frames, expect, stats, hist, live, tlbv, rng)

        def addr(a):
            return a.ctypes.data

        def rows(a):
            return a.strides[0] // 8

        fixed = (addr(p), addr(dom), addr(pte), addr(dbits), addr(vst), rows(vst), addr(frames), rows(frames),
                 addr(expect), rows(expect), addr(stats), rows(stats), addr(hist), rows(hist), addr(live),
                 rows(live), addr(tlbv), tlbv.shape[0] // tlb.T_COLS, addr(rng))
        fn = self._fn

        def run_ops(n: int, vcpu: int) -> int:
            return fn(n, vcpu, *fixed)

        run_ops.arrays = keep          # the arrays outlive the addresses taken from them
        return run_ops

    def close(self) -> None:
        if self._dir is not None:
            self._dir.cleanup()


def module_name(module) -> str:
    """A design module's name in the package (``kmap_local``): the name of its C file and C functions."""
    return module.__name__.rsplit(".", 1)[1]


def c_file(module) -> Path:
    """Where a design's C map and unmap live: ``csrc/variants/<module>.h``."""
    return CSRC / "variants" / f"{module_name(module)}.h"


def native_modules() -> list:
    """The registry's native kinds (``NATIVE``): designs whose C comes from elsewhere (xen: the user's tree)."""
    from .variants import VARIANTS

    return list(dict.fromkeys(v.module for v in VARIANTS.values() if v.module.NATIVE))


def designs_header() -> str:
    """``testbed_designs.h``: the registry's designs for the port, ``TESTBED_DESIGNS(X)`` expanding
    ``X(module, id)`` for each, their C files included, ``testbed_variants`` naming the ids.

    A native kind's entry (id ``VID``) stands under ``#ifdef TESTBED_<NAME>``, its ``<module>_map`` and
    ``<module>_unmap`` declared only: the build that defines the flag compiles their bodies in after
    the port (testbed/xen.py: the tree's domain_page.c and csrc/xen/glue.c). It comes first in the
    dispatch, as its id is outside the table's.
    """
    from .variants import MODULES

    lines = [f"/* {DESIGNS_H}: generated by testbed.native from the registry (testbed/variants/__init__.py); "
             "do not edit. */", ""]
    native = []
    for m in native_modules():
        name, flag = module_name(m), f"TESTBED_{module_name(m).upper()}"
        lines += [f"#ifdef {flag}", f"static i64 {name}_map(struct arrays *a, i64 vcpu, i64 mfn, int irq);",
                  f"static i64 {name}_unmap(struct arrays *a, i64 vcpu, i64 va, int irq);",
                  f"#define TESTBED_NATIVE_{name.upper()}(X) X({name}, {int(m.VID)})", "#else",
                  f"#define TESTBED_NATIVE_{name.upper()}(X)", "#endif", ""]
        native.append(f"TESTBED_NATIVE_{name.upper()}(X)")
    lines += [f'#include "variants/{module_name(m)}.h"' for m in MODULES]
    table = " ".join(native + [f"X({module_name(m)}, {vid})" for vid, m in enumerate(MODULES)])
    lines += ["", f"#define TESTBED_DESIGNS(X) {table}", f'const char testbed_variants[] = "{variant_names()}";']
    return "\n".join(lines) + "\n"


def port_sources() -> dict[str, str]:
    """Every file the port compiles, by its name under csrc/ (the generated table included), for a
    build's cache key (testbed/xen.py): a change to any design's C changes the key."""
    from .variants import MODULES

    out = {f: (CSRC / f).read_text() for f in COMMON}
    out.update({f"variants/{module_name(m)}.h": c_file(m).read_text() for m in MODULES})
    out[DESIGNS_H] = designs_header()
    return out


def variant_names() -> str:
    """The registry's variant modules by id (the C port's ``testbed_variants``)."""
    from .variants import MODULES

    return ",".join(m.NAME for m in MODULES)


def lock_names() -> str:
    """locked's locks by index (the C port's ``testbed_locks``)."""
    from .variants import locked

    return ",".join(locked.LOCKS)


def dom_layout_names() -> str:
    """locked's domain-word layouts by index (the C port's ``testbed_dom_layouts``)."""
    from .variants import locked

    return ",".join(locked.DOM_LAYOUTS)


def _check(name: str, a: np.ndarray, ndim: int) -> None:
    """The C side indexes raw words: every array must be int64 (rng uint64), rows contiguous."""
    want = np.uint64 if name == "rng" else np.int64
    if a.dtype != want or a.ndim != ndim or a.strides[-1] != 8 or (ndim == 2 and a.strides[0] % 8):
        raise ValueError(f"native: array {name} must be a {ndim}-D {np.dtype(want).name} array with contiguous rows")
    if name == "tlb" and a.shape[0] % tlb.T_COLS:
        raise ValueError("native: the TLB must be one flat array of 3-word entries")
