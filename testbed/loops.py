"""The compiled operation loop of each variant, and ``run_ops``, which picks one by the variant id.

The loops are generated from the registry (``variants/dispatch.py``): one function per
variant module, each inlining ``kernels.ops_loop`` with its id as a constant, with and
without interrupts (testbed/irq.py). The generated module imports ``kernels``, so it is
loaded here, above it, once ``kernels`` is whole.
"""

from . import abi, kernels  # noqa: F401  (kernels: whole before the generated loops import it)
from .variants import dispatch

_LOOPS = dispatch.loops()


def loop_of(vid: int, irq: bool):
    """The compiled operation loop of variant id ``vid``, with interrupts or not: the variant's own,
    or, for an id the registry does not know, the loop that runs nothing (it reports ``abi.ST_BAD_VARIANT``)."""
    if irq:
        return _LOOPS.LOOPS_IRQ[vid] if 0 <= vid < len(_LOOPS.LOOPS_IRQ) else _LOOPS.run_ops_any_irq
    return _LOOPS.LOOPS[vid] if 0 <= vid < len(_LOOPS.LOOPS) else _LOOPS.run_ops_any


def loop(p):
    """The compiled operation loop for ``p[P_VARIANT]``; with interrupts (``p[P_IRQ_INTERVAL]``
    non-zero, testbed/irq.py) its interrupt loop."""
    return loop_of(int(p[abi.P_VARIANT]), p[abi.P_IRQ_INTERVAL] != 0)


def run_ops(n, vcpu, p, dom, pte, dbits, vst, frames, expect, stats, hist, live, tlbv, rng):
    """Run ``n`` operations of the configured workload; a status code (0 = all fine).

    Mappings held when the loop stops (an error in the middle of a nested walk)
    stay listed in ``live[vcpu]`` as (va, mfn) pairs, their count in S_LIVE.
    """
    return loop(p)(n, vcpu, p, dom, pte, dbits, vst, frames, expect, stats, hist, live, tlbv, rng)
