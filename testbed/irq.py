"""Simulated interrupts (``--irq-rate R``) and NMIs (``--nmi-rate R``): what a variant calls, and the rules of arrival.

``--irq-rate`` is a stress that Xen forbids: its interrupt handlers do not map
(``traps.c``: "map_domain_page() is not IRQ-safe", and a bail-out ``if (
in_irq() )``). The ``local_irq_save`` in Xen's ``map_domain_page`` guards
against the ``FLUSH_VCPU_STATE`` IPI of a lazy context switch changing the page
tables under an in-use slot, not against handlers that map. What can map in a
context ``local_irq_save`` does not mask is an NMI (or #MC): XSA-494 (Xen
commit 622c9a5ba9) ends "There are known issues with the use of mapcache in
NMI context". With ``--nmi-rate R`` the interrupts are NMIs
(``p[abi.P_NMI]``): they arrive at the same points, but ``irq_save`` does not
defer them, so a handler can run between any two steps of a map or unmap with
interrupts off (counted in ``S_NMI_IRQS_OFF``). A design that cannot survive
that fails by a named check; ``locked``'s handler, reaching the lock its own
CPU holds, stops with ``ST_DEADLOCK`` rather than spin for ever. NMIs do not
nest (the handler's own map and unmap have no arrival points, as NMIs are
blocked until the handler's IRET). ``slots`` adds no handler slot for them: a
design's default geometry is never refused for ``--nmi-rate``, and a handler
that finds no slot is an exhaustion, the run's named failure.

With either option every vCPU is interrupted about R times per second; each
interrupt's handler maps a page, accesses it through the oracle's check
(``kernels.access``) and unmaps it, nested inside whatever the vCPU was doing.

Arrival. At the start of each operation a vCPU compares the cycle counter with
the time of its next interrupt (a timer interrupt: the host clock decides
*which* operation is interrupted). When it is due, the interrupt becomes
pending and arrives at the k-th *arrival point* from there, k uniform in
1..``SPAN`` from the vCPU's own interrupt generator (seeded from seed + vcpu,
apart from the workload's generator, so that the workload's draws are the same
with and without interrupts). The next interrupt is due after a gap uniform
in [0.5, 1.5) times the mean, counted from then (a vCPU that was descheduled
gets one interrupt, not the backlog). The handler's MFN comes from the same
generator.

Arrival points are the operation loop's (``loop_point``: before each map,
after each map, before each unmap) and the variant's own: ``irq_point(irq,
...)`` calls that a variant's ``map_page`` and ``unmap_page`` make between
their steps, where the real code could be interrupted. At a point where the
variant has interrupts disabled (``vrow[abi.V_IRQ_OFF]`` non-zero, raised by
``irq_save`` and lowered by ``irq_restore``) the interrupt is deferred,
counted, and taken at the first point after interrupts are enabled again, as
``local_irq_restore`` delivers a pending interrupt. A handler runs with
interrupts disabled (no nested handlers), and its own map and unmap get no
interrupt context: no points inside them, and a design's code is never inlined
into itself.

Cost when off: nothing. The interrupt context ``irq`` is an argument whose
*type* decides: ``None`` (the loop every run without ``--irq-rate`` uses)
compiles every point, save, restore and arming to no code at all; a tuple
``(frames, erow, tag)`` (the loop of a run with ``--irq-rate``, a separate compiled
function, see ``variants/dispatch.py``; the tag picks the design's own handler,
``_handler_of``) compiles them to one load and a branch each. ``p[abi.P_IRQ_INTERVAL]`` picks the loop: 0 the plain one; > 0 the
interrupt loop with timed arrivals; < 0 the interrupt loop with no timer, where
only a test makes interrupts pending (``tests/test_irq.py``).

Slots. A handler holds one mapping while it runs, on top of whatever the
interrupted code holds: the seed's remark that interrupt-time mappings share
the per-vCPU slots. ``slots(cfg)`` is what a design's ``validate`` adds to the
deepest nested walk.
"""

from __future__ import annotations

import numpy as np
from numba import types
from numba.extending import overload

from . import abi
from .atomics import rdtsc
from .jit import kernel

SPAN = 128                     # a pending interrupt arrives within this many arrival points (a 16-deep walk has ~100)
HANDLER_MAPS = 1               # mappings a handler holds at once
MIN_INTERVAL_CYCLES = 1000     # the shortest mean gap between interrupts: about one handler's work
STREAM = 1 << 32               # the interrupt generator of vCPU v is seeded as "vCPU" v + STREAM
NO_TIMER = -1                  # p[P_IRQ_INTERVAL] for the interrupt loop with no timed arrivals (tests)


def slots(cfg) -> int:
    """Slots per vCPU an interrupt can need on top of the interrupted code's."""
    return HANDLER_MAPS if getattr(cfg, "irq_rate", 0) > 0 else 0


def walk_slots(cfg) -> tuple[int, str]:
    """The slots one vCPU needs for the deepest nested walk (PAGING_LEVELS**2), an interrupt
    handler's on top when interrupts are on, and the words that say so, for a design's ``validate``."""
    extra = slots(cfg)
    words = f"levels**2 ({cfg.levels ** 2})" + (f" plus {extra} for an interrupt handler" if extra else "")
    return cfg.levels ** 2 + extra, words


def max_rate(tsc_hz: float) -> int:
    """The highest --irq-rate this host can time: one interrupt per MIN_INTERVAL_CYCLES cycles."""
    return int(tsc_hz // MIN_INTERVAL_CYCLES)


def interval_cycles(rate: float, tsc_hz: float) -> int:
    """Mean cycles between two interrupts of one vCPU at ``rate`` per second; 0 when off."""
    return int(tsc_hz / rate) if rate > 0 else 0


# The interrupt handler (``kernels.irq_take``): it maps and unmaps through the designs, whose map
# and unmap call the arrival points below, so it sits above them and registers itself here
# (``handler``); an import of it from here would close that circle.
_HANDLER: list = []


def handler(fn):
    """Register ``fn`` as the handler the arrival points run (a decorator: ``kernels.irq_take``)."""
    _HANDLER[:] = [fn]
    return fn


def _handler():
    if not _HANDLER:
        raise RuntimeError("no interrupt handler registered: testbed.kernels defines it (import it first)")
    return _HANDLER[0]


# Each design's own handler, by variant id (the generated loops module registers them: ``handlers``).
# A design's interrupt loop passes the context ``(frames, erow, tag)``, where ``tag`` is a tuple of
# vid + 1 zeros: its length, part of its type, tells the arrival points at compile time which
# design's handler to call, so that loop compiles that design's map and unmap in its handler and
# no other's. The context ``(frames, erow)`` gets the handler that reads the id from ``p``.
_BY_VID: list = []


def handlers(fns) -> None:
    """Register each design's own handler, in variant-id order (``variants/dispatch.py``)."""
    _BY_VID[:] = list(fns)


def context_tag(vid: int) -> str:
    """The source of the tag of variant ``vid``'s interrupt context: a tuple of vid + 1 zeros."""
    return "(" + "0, " * (vid + 1) + ")"


def _handler_of(irq):
    """The handler the arrival points of context type ``irq`` call (see ``_BY_VID``)."""
    tys = getattr(irq, "types", ())
    if len(tys) == 3 and isinstance(tys[2], types.UniTuple) and tys[2].count - 1 < len(_BY_VID):
        return _BY_VID[tys[2].count - 1]
    return _handler()


# --- the interrupt clock: each vCPU's own generator and the time of its next interrupt ----------


@kernel
def irq_rand(vrow, n):
    """Uniform integer in [0, n) from the vCPU's interrupt generator (xorshift64* in V_IRQ_RNG)."""
    x = np.uint64(vrow[abi.V_IRQ_RNG])
    x ^= x >> np.uint64(12)
    x ^= x << np.uint64(25)
    x ^= x >> np.uint64(27)
    vrow[abi.V_IRQ_RNG] = np.int64(x)
    return np.int64((((x * np.uint64(0x2545F4914F6CDD1D)) >> np.uint64(32)) * np.uint64(n)) >> np.uint64(32))


@kernel
def irq_due(p, vrow):
    """At an operation's start: make the next interrupt pending when the clock says it is due."""
    now = rdtsc()
    nxt = vrow[abi.V_IRQ_NEXT]
    gap = p[abi.P_IRQ_INTERVAL]
    if nxt == 0:
        vrow[abi.V_IRQ_NEXT] = now + (gap >> 16) * irq_rand(vrow, 1 << 16)      # a random phase per vCPU
    elif now >= nxt and vrow[abi.V_IRQ_PENDING] == 0:
        vrow[abi.V_IRQ_PENDING] = 1 + irq_rand(vrow, SPAN)
        # The next one after a gap uniform in [0.5, 1.5) times the mean, counted from now: a vCPU
        # that was descheduled gets one interrupt, not the backlog.
        vrow[abi.V_IRQ_NEXT] = now + gap // 2 + (gap >> 16) * irq_rand(vrow, 1 << 16)


def _off(irq) -> bool:
    return isinstance(irq, (types.NoneType, types.Omitted))


# The overloads below are compiled as functions of their own, and LLVM inlines them (an empty one
# disappears). Inlined at numba's IR level instead (``inline="always"``), several copies in one
# loop were mis-compiled: a design's refcount update was lost with interrupts off, and the TLB
# never hit with them on (tests/test_shipped_loop.py and tests/test_native.py catch both).


# --- what a variant's map and unmap and the operation loop call ------------------------------
# Each is a Python function (what runs with NUMBA_DISABLE_JIT) and an overload for compiled code,
# which is no code at all when ``irq`` is None.


def irq_point(irq, vcpu, p, dom, pte, dbits, vrow, srow, tlbv):
    """An arrival point inside a variant's map or unmap."""
    _arrive(irq, vcpu, p, dom, pte, dbits, vrow, srow, tlbv, 1)


def loop_point(irq, vcpu, p, dom, pte, dbits, vrow, srow, tlbv):
    """An arrival point of the operation loop, between the variant's operations."""
    _arrive(irq, vcpu, p, dom, pte, dbits, vrow, srow, tlbv, 0)


def irq_save(irq, vrow, on=True):
    """``local_irq_save`` (when ``on``: a negative control leaves it out): interrupts disabled until
    the matching ``irq_restore``."""
    if irq is not None and on:
        vrow[abi.V_IRQ_OFF] += 1


def irq_restore(irq, vrow, on=True):
    """``local_irq_restore`` (when ``on``)."""
    if irq is not None and on:
        vrow[abi.V_IRQ_OFF] -= 1


def irq_arm(irq, p, vrow):
    """At an operation's start: make the next interrupt pending when the clock says it is due."""
    if irq is not None and p[abi.P_IRQ_INTERVAL] > 0:
        irq_due(p, vrow)


def irq_status(irq, vrow, status):
    """``status``, or a failed handler's status when the operation itself went well."""
    if irq is not None and status == abi.ST_OK and vrow[abi.V_IRQ_STATUS] != abi.ST_OK:
        return vrow[abi.V_IRQ_STATUS]
    return status


def _arrive(irq, vcpu, p, dom, pte, dbits, vrow, srow, tlbv, inside):
    if irq is not None and vrow[abi.V_IRQ_PENDING] != 0:
        _handler()(vcpu, p, dom, pte, dbits, vrow, srow, tlbv, irq[0], irq[1], inside)


def _arrival(inside: int):
    """The overload of an arrival point (``inside``: within a map or unmap)."""
    def typer(irq, vcpu, p, dom, pte, dbits, vrow, srow, tlbv):
        if _off(irq):
            return lambda irq, vcpu, p, dom, pte, dbits, vrow, srow, tlbv: None
        irq_take = _handler_of(irq)

        def point(irq, vcpu, p, dom, pte, dbits, vrow, srow, tlbv):
            if vrow[abi.V_IRQ_PENDING] != 0:
                irq_take(vcpu, p, dom, pte, dbits, vrow, srow, tlbv, irq[0], irq[1], inside)
        return point
    return typer


def _depth(delta: int):
    """The overload of irq_save (+1) or irq_restore (-1)."""
    def typer(irq, vrow, on=True):
        if _off(irq):
            return lambda irq, vrow, on=True: None

        def change(irq, vrow, on=True):
            if on:
                vrow[abi.V_IRQ_OFF] += delta
        return change
    return typer


overload(irq_point)(_arrival(1))
overload(loop_point)(_arrival(0))
overload(irq_save)(_depth(1))
overload(irq_restore)(_depth(-1))


@overload(irq_arm)
def _irq_arm(irq, p, vrow):
    if _off(irq):
        return lambda irq, p, vrow: None

    def arm(irq, p, vrow):
        if p[abi.P_IRQ_INTERVAL] > 0:
            irq_due(p, vrow)
    return arm


@overload(irq_status)
def _irq_status(irq, vrow, status):
    if _off(irq):
        return lambda irq, vrow, status: status

    def merged(irq, vrow, status):
        if status == abi.ST_OK and vrow[abi.V_IRQ_STATUS] != abi.ST_OK:
            return vrow[abi.V_IRQ_STATUS]
        return status
    return merged
