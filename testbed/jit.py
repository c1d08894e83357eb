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

# Helpers on the per-operation path are inlined into the loop at numba's IR
# level: a call that passes a dozen arrays by value costs more than the work.
inline_kernel = njit(cache=True, _nrt=False, error_model="numpy", inline="always")


@kernel
def nonneg(i):
    """``i``, known to be >= 0, as an unsigned index: numba then emits no negative-index
    wraparound (a sign test and an add on every access) for it."""
    return np.uint64(i)
