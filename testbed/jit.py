"""The one decorator every compiled kernel uses.

- ``cache=True``: compiled code is kept on disk (the directory is keyed by the
  kernels' source, see ``testbed/__init__.py``), so later runs start at once.
- ``_nrt=False``: no reference counting. Kernels never allocate (docs/variants.md, conventions 4),
  and with the runtime on, every array passed to a helper or sliced to a row
  costs an atomic increment and decrement: measured here, it tripled the cost
  of a directmap operation.
- ``error_model="numpy"``: no zero-division checks that would raise from a
  kernel; divisors are validated before a run starts.
"""

import numpy as np
from numba import njit

kernel = njit(cache=True, _nrt=False, error_model="numpy")

# Inlined at numba's IR level (``inline="always"``): each call site gets a copy of the callee's
# IR, typed again there. Only for what LLVM would not inline by itself and the loop must have
# inline (a call that passes a dozen arrays by value costs more than the work): the operation
# loop into its per-variant wrapper (the variant id a constant there), the timed map and the
# checked access, a design's map and unmap, locked's slow path. Every other helper is a plain
# ``kernel``, compiled once, and LLVM inlines it where it pays (the loops' machine code holds no
# call to them). Measured on a 2-core host: with every helper inlined at the IR level, the ten
# loops of the registry took 124 s to compile cold, 75 s this way; ns per operation unchanged
# (``scripts/bench.py --vs-c``).
inline_kernel = njit(cache=True, _nrt=False, error_model="numpy", inline="always")

@kernel
def nonneg(i):
    """``i``, known to be >= 0, as an unsigned index: numba then emits no negative-index
    wraparound (a sign test and an add on every access) for it."""
    return np.uint64(i)
