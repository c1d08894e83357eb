"""The operation loop in C (``csrc/testbed_op.c``), built and loaded on demand.

The C port is the yardstick for ``loops.run_ops``: the same work without
numba, on the same arrays. ``load()`` compiles it with the system C compiler
into a private temporary directory (nothing is written into the source tree)
and returns a callable with ``run_ops``'s signature. ``scripts/bench.py
--vs-c`` times the two side by side; ``tests/test_native.py`` checks that they
leave the same counters. The port names its variant ids and locked's lock and
domain-layout indices; ``Native`` refuses to load one whose names disagree with
the registry's (``variants.MODULES`` order, ``locked.LOCKS``,
``locked.DOM_LAYOUTS``), so that an id never runs another design in C.
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

SOURCE = Path(__file__).resolve().parent / "csrc" / "testbed_op.c"
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
            res = subprocess.run([cc, *CFLAGS, str(SOURCE), "-o", lib], capture_output=True, text=True)
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
