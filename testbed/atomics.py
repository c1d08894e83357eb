"""CPU atomics for compiled kernels on shared numpy arrays.

Numba has no atomics of its own. Each operation here is a plain Python function
(the fallback that runs under ``NUMBA_DISABLE_JIT=1``, sequentially correct
but not atomic) with a numba ``overload`` that emits the LLVM instruction:
``atomicrmw``, ``cmpxchg``, ``load atomic`` / ``store atomic``. On x86-64 they
become ``lock xadd``, ``lock cmpxchg``, ``xchg``, ``lock or`` / ``lock and`` and
plain ``mov`` for acquire loads and release stores. They work across processes
because the arena is one physical segment mapped into each of them.

Every function takes a 1-D array of 32- or 64-bit integers, an index and
(where it writes) a value, converted to the array's dtype. For a row of a 2-D
per-vCPU array, pass the row (``a[v]``): a view costs nothing in compiled code.
"""

from __future__ import annotations

import contextlib
import time

from llvmlite import ir
from numba import types
from numba.core import config as numba_config
from numba.core import cgutils
from numba.extending import intrinsic, overload

_ORDER = "seq_cst"


def _elem_ptr(context, builder, aryty, ary, idxty, idx):
    arr = context.make_array(aryty)(context, builder, value=ary)
    i = context.cast(builder, idx, idxty, types.intp)
    return cgutils.get_item_pointer(context, builder, aryty, arr, [i], wraparound=False)


def _ok(aryty, *scalars):
    return (
        isinstance(aryty, types.Array)
        and aryty.ndim == 1
        and isinstance(aryty.dtype, types.Integer)
        and aryty.dtype.bitwidth in (32, 64)
        and all(isinstance(s, (types.Integer, types.Boolean)) for s in scalars)
    )


def _rmw_intrinsic(op):
    @intrinsic
    def _impl(typingctx, ary, idx, val):
        if not _ok(ary, idx, val):
            return None

        def codegen(context, builder, sig, args):
            ptr = _elem_ptr(context, builder, sig.args[0], args[0], sig.args[1], args[1])
            v = context.cast(builder, args[2], sig.args[2], sig.args[0].dtype)
            return builder.atomic_rmw(op, ptr, v, _ORDER)

        return ary.dtype(ary, idx, val), codegen

    return _impl


@intrinsic
def _cas(typingctx, ary, idx, expected, new):
    if not _ok(ary, idx, expected, new):
        return None

    def codegen(context, builder, sig, args):
        dt = sig.args[0].dtype
        ptr = _elem_ptr(context, builder, sig.args[0], args[0], sig.args[1], args[1])
        exp = context.cast(builder, args[2], sig.args[2], dt)
        nv = context.cast(builder, args[3], sig.args[3], dt)
        return builder.extract_value(builder.cmpxchg(ptr, exp, nv, _ORDER, _ORDER), 0)

    return ary.dtype(ary, idx, expected, new), codegen


@intrinsic
def _load_acquire(typingctx, ary, idx):
    if not _ok(ary, idx):
        return None

    def codegen(context, builder, sig, args):
        ptr = _elem_ptr(context, builder, sig.args[0], args[0], sig.args[1], args[1])
        return builder.load_atomic(ptr, "acquire", sig.args[0].dtype.bitwidth // 8)

    return ary.dtype(ary, idx), codegen


@intrinsic
def _store_release(typingctx, ary, idx, val):
    if not _ok(ary, idx, val):
        return None

    def codegen(context, builder, sig, args):
        ptr = _elem_ptr(context, builder, sig.args[0], args[0], sig.args[1], args[1])
        v = context.cast(builder, args[2], sig.args[2], sig.args[0].dtype)
        builder.store_atomic(v, ptr, "release", sig.args[0].dtype.bitwidth // 8)
        return context.get_dummy_value()

    return types.void(ary, idx, val), codegen


@intrinsic
def _store_release_lo32(typingctx, ary, idx, val):
    if not (_ok(ary, idx, val) and ary.dtype.bitwidth == 64):
        return None

    def codegen(context, builder, sig, args):
        ptr = _elem_ptr(context, builder, sig.args[0], args[0], sig.args[1], args[1])
        lo = builder.bitcast(ptr, ir.IntType(32).as_pointer())      # x86-64 is little-endian: the low half first
        v = builder.trunc(context.cast(builder, args[2], sig.args[2], types.int64), ir.IntType(32))
        builder.store_atomic(v, lo, "release", 4)
        return context.get_dummy_value()

    return types.void(ary, idx, val), codegen


@intrinsic
def _pause(typingctx):
    def codegen(context, builder, signature, args):
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), []), "llvm.x86.sse2.pause")
        builder.call(fn, [])
        return context.get_dummy_value()

    return types.void(), codegen


@intrinsic
def _rdtsc(typingctx):
    def codegen(context, builder, signature, args):
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.IntType(64), []), "llvm.readcyclecounter")
        return builder.call(fn, [])

    return types.int64(), codegen


@intrinsic
def _cttz(typingctx, x):
    if not isinstance(x, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        return builder.cttz(args[0], ir.Constant(ir.IntType(1), 1))

    return x(x), codegen


# --- Python fallbacks (NUMBA_DISABLE_JIT=1) and their compiled overloads -----------------
# The fallbacks are what runs when the JIT is off. Read-modify-writes then take one
# lock shared by every process forked from this one (made at import, before any
# fork), so that even the slow debugging mode is atomic across vCPU processes.
# Aligned 8-byte loads and stores are single instructions already.

if numba_config.DISABLE_JIT:
    import multiprocessing

    _RMW = multiprocessing.get_context("fork").Lock()
else:
    _RMW = contextlib.nullcontext()


def fetch_add(a, i, v):
    """a[i] += v atomically; returns the old value."""
    with _RMW:
        old = a[i]
        a[i] = old + a.dtype.type(v)
    return old


def fetch_or(a, i, v):
    """a[i] |= v atomically; returns the old value."""
    with _RMW:
        old = a[i]
        a[i] = old | a.dtype.type(v)
    return old


def fetch_and(a, i, v):
    """a[i] &= v atomically; returns the old value."""
    with _RMW:
        old = a[i]
        a[i] = old & a.dtype.type(v)
    return old


def exchange(a, i, v):
    """a[i] = v atomically; returns the old value."""
    with _RMW:
        old = a[i]
        a[i] = v
    return old


def cas(a, i, expected, new):
    """If a[i] == expected then a[i] = new, atomically; returns the old value."""
    with _RMW:
        old = a[i]
        if old == a.dtype.type(expected):
            a[i] = new
    return old


def load_acquire(a, i):
    """Read a[i] with acquire ordering (never hoisted out of a spin loop)."""
    return a[i]


def store_release(a, i, v):
    """Write a[i] = v with release ordering."""
    a[i] = v


def store_release_lo32(a, i, v):
    """Write the low 32 bits of the 64-bit word a[i] with release ordering, its high half untouched
    (a plain 4-byte ``mov``): how the holder of a ticket lock with head and tail in one word moves
    the head without touching the tail, as Xen's ``add_sized(&lock->tickets.head, 1)`` does."""
    with _RMW:
        a[i] = (int(a[i]) & ~0xFFFFFFFF) | (int(v) & 0xFFFFFFFF)


def cpu_relax():
    """PAUSE, for the body of spin loops."""


def rdtsc():
    """The CPU's time-stamp counter (cycles); nanoseconds in the Python fallback."""
    return time.perf_counter_ns()


def lowest_bit(x):
    """Index of the lowest set bit of a non-zero integer (count trailing zeros)."""
    x = int(x)
    return (x & -x).bit_length() - 1


def _rmw_overload(pyfunc, op):
    impl = _rmw_intrinsic(op)

    @overload(pyfunc)
    def _ov(a, i, v):
        if _ok(a, i, v):
            return lambda a, i, v: impl(a, i, v)


for _f, _op in ((fetch_add, "add"), (fetch_or, "or"), (fetch_and, "and"), (exchange, "xchg")):
    _rmw_overload(_f, _op)


@overload(cas)
def _ov_cas(a, i, expected, new):
    if _ok(a, i, expected, new):
        return lambda a, i, expected, new: _cas(a, i, expected, new)


@overload(load_acquire)
def _ov_load(a, i):
    if _ok(a, i):
        return lambda a, i: _load_acquire(a, i)


@overload(store_release)
def _ov_store(a, i, v):
    if _ok(a, i, v):
        return lambda a, i, v: _store_release(a, i, v)


@overload(store_release_lo32)
def _ov_store_lo32(a, i, v):
    if _ok(a, i, v) and a.dtype.bitwidth == 64:
        return lambda a, i, v: _store_release_lo32(a, i, v)


@overload(cpu_relax)
def _ov_relax():
    return lambda: _pause()


@overload(lowest_bit)
def _ov_lowest_bit(x):
    if isinstance(x, types.Integer):
        return lambda x: _cttz(x)


@overload(rdtsc)
def _ov_rdtsc():
    return lambda: _rdtsc()


__all__ = ["cas", "cpu_relax", "exchange", "fetch_add", "fetch_and", "fetch_or", "load_acquire", "lowest_bit", "rdtsc",
           "store_release", "store_release_lo32"]
