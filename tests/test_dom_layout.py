"""The two layouts of a domain's words (--dom-layout, testbed/dom_layout.py) as locked runs them: where
the words sit, the one-word ticket lock of the xen layout (testbed/locks.py: wrap, snapshot), the
option's refusal for other variants."""

from __future__ import annotations

import os
import time

import multiprocess as mp
import numba
import numpy as np
import pytest

from testbed import abi, config, dom_layout, harness, locks
from testbed.config import RunConfig
from testbed.errors import UsageError
from testbed.shared import Arena
from testbed.variants import locked

from conftest import testbed_cli

HOT = ("cursor", "lock", "epoch", "tlbflush_ts")     # struct mapcache_domain's words


def _line(word: int) -> int:
    return word * 8 // 64


@pytest.mark.parametrize("lock", locks.LOCKS)
def test_xen_layout_puts_the_four_words_on_one_line_and_padded_does_not(lock):
    """Mutation tried: ``X_EPOCH = 16`` (the epoch on the owner's line): the xen assertion fails."""
    xen, padded = locked.dom_words("xen", lock), locked.dom_words("padded", lock)
    assert len({_line(xen[k]) for k in HOT}) == 1
    assert len({_line(padded[k]) for k in HOT}) == len(HOT)       # each on a line of its own
    # the testbed's own words (owner, handoff stamps) and the global TLB clock stay off the hot line
    hot = _line(xen["cursor"])
    assert all(_line(xen[k]) != hot for k in ("owner", "handoff_tsc", "handoff_from"))
    assert _line(0) != hot and _line(dom_layout.D_TAS_WAITERS) != hot and _line(locks.mcs_node(0)) != hot
    # the compiled kernels use the same words as this table
    kind = locks.LOCKS.index(lock)
    for name, layout in (("xen", dom_layout.LAYOUT_XEN), ("padded", dom_layout.LAYOUT_PADDED)):
        w = locked.dom_words(name, lock)
        assert tuple(dom_layout.domain_words(layout)) == (w["cursor"], w["epoch"], w["tlbflush_ts"])
        assert locks.lock_word(layout, kind) == w["lock"]
        assert tuple(locks.owner_words(layout)) == (w["owner"], w["handoff_tsc"], w["handoff_from"])
    assert locked.DOM_LAYOUTS == dom_layout.DOM_LAYOUTS == ("xen", "padded")          # xen is the default
    assert locked.LOCKS == locks.LOCKS


def _views(vcpus=2, layout="xen", lock="ticket"):
    cfg = config.validate(RunConfig(variant="locked", vcpus=vcpus, frames=64, dom_layout=layout, lock=lock))
    lay = harness.build_layout(cfg)
    views = lay.views(bytearray(lay.size))
    harness.init_state(views, cfg)
    return cfg, views


def _word(head: int, tail: int) -> int:
    return int(np.int64(np.uint64(((tail & locks.TICKET_MASK) << 32) | (head & locks.TICKET_MASK))))


def test_waiters_and_free_from_constructed_ticket_words():
    """Tickets compare modulo 2**32, across the wrap of either half.

    Mutation tried: ``max(0, (tail - head) - 1)`` in ``locks.waiters`` (no ``& TICKET_MASK``): the
    wrapped cases read 0 waiters.
    """
    cfg, views = _views(vcpus=4)
    lw = locked.dom_words("xen")["lock"]
    for head, tail, waiters, free in ((0, 0, 0, True), (5, 6, 0, False), (5, 8, 2, False),
                                      (0xFFFFFFFE, 0, 1, False), (0xFFFFFFFF, 2, 2, False),
                                      (0xFFFFFFFF, 0xFFFFFFFF, 0, True), (7, 7, 0, True)):
        views["dom"][lw] = _word(head, tail)
        assert locks.ticket_snapshot(views["dom"], "xen") == (head, tail)
        assert locked.lock_waiters(views, cfg) == waiters, (head, tail)
        assert locked.lock_free(views, cfg) is free


@numba.njit
def _take_and_give(dom, srow, n, vcpu, stop=None):
    for _ in range(n):
        if stop is not None and stop[abi.C_STOP] != 0:
            break
        my = locks.acquire(dom, srow, vcpu, locks.LOCK_TICKET, dom_layout.LAYOUT_XEN)
        srow[abi.S_OPS] += 1
        locks.release(dom, my, srow, 0, vcpu, locks.LOCK_TICKET, dom_layout.LAYOUT_XEN)


def test_ticket_wraps_without_carrying_into_the_tail():
    """Start one below the wrap of both halves: take and give the lock across it.

    Mutation tried: ``ticket_unlock`` as ``fetch_add(dom, lw, 1)`` (a 64-bit add): when the head
    wraps it carries into the tail, and the word reads (head 0, tail 1): held, one ticket ahead.
    """
    cfg, views = _views(vcpus=1)
    lw = locked.dom_words("xen")["lock"]
    views["dom"][lw] = _word(0xFFFFFFFF, 0xFFFFFFFF)
    _take_and_give(views["dom"], views["stats"][0], 1, 0)
    assert locks.ticket_snapshot(views["dom"], "xen") == (0, 0) and locked.lock_free(views, cfg)
    _take_and_give(views["dom"], views["stats"][0], 3, 0)
    assert locks.ticket_snapshot(views["dom"], "xen") == (3, 3)
    assert views["stats"][0, abi.S_LOCK_CONTENDED] == 0


def _hammer(name, layout, vcpu, core, n):
    os.sched_setaffinity(0, {core})
    arena = Arena.attach(name, layout)
    v = arena.views
    _take_and_give(v["dom"], v["stats"][vcpu], n, vcpu, v["ctl"])
    arena.close()


def test_waiters_never_exceed_vcpus_minus_one_on_a_live_lock(exclusive, no_leftovers):
    """Two processes take and give the xen-layout ticket lock as fast as they can; this process reads
    lock_waiters thousands of times meanwhile: one read of the one word is one instant, so never
    more than vCPUs - 1 waiters.

    Mutation tried: ``ticket_snapshot`` reading the word twice (head from the first read, tail
    from the second): between the two the tail runs ahead and waiters of 2 or more are read.
    """
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.skip(f"needs 2 CPUs, this process may use {cpus}")
    cfg, views0 = _views(vcpus=2)
    _take_and_give(views0["dom"], views0["stats"][0], 1, 0, views0["ctl"])    # compiled before the fork
    tries = []
    for _ in range(3):              # on a loaded host the two may not overlap: try again, fail if never
        samples, most, contended = _sample_waiters(cfg, cpus)
        assert most <= cfg.vcpus - 1, f"{most} waiters read with {cfg.vcpus} vCPUs ({samples} samples)"
        tries.append((samples, contended))
        if samples > 1000 and contended > 0:
            return
    pytest.fail(f"the two processes never contended while sampled (samples, contended acquisitions): {tries}")


def _sample_waiters(cfg, cpus):
    """Two processes hammer the lock while this one reads lock_waiters: (samples, most seen, contended)."""
    lay = harness.build_layout(cfg)
    arena = Arena.create(lay)
    procs = []
    try:
        harness.init_state(arena.views, cfg)
        ctx = mp.get_context("fork")
        for vcpu in range(2):
            p = ctx.Process(target=_hammer, args=(arena.name, lay, vcpu, cpus[vcpu], 3_000_000), daemon=True)
            p.start()
            procs.append(p)
        # Sample for two seconds (or until both are done), then tell them to stop: on a loaded host
        # a preempted holder makes the other spin for a whole host time slice.
        seen, samples = [0], 0
        deadline = time.monotonic() + 2.0
        while any(p.is_alive() for p in procs) and time.monotonic() < deadline:
            seen.append(locked.lock_waiters(arena.views, cfg))
            samples += 1
        arena.views["ctl"][abi.C_STOP] = 1
        for p in procs:
            p.join(60)
        assert [p.exitcode for p in procs] == [0, 0]
        assert locked.lock_free(arena.views, cfg)
        return samples, max(seen), int(arena.views["stats"][:, abi.S_LOCK_CONTENDED].sum())
    finally:
        for p in procs:
            if p.exitcode is None:
                p.kill()
                p.join(5)
        arena.destroy()


def test_dom_layout_is_refused_for_a_variant_with_one_layout():
    """Mutation tried: the ``not in v.dom_layouts`` check in ``config.validate`` made ``if False:``:
    lockless with --dom-layout xen validates, and the first assertion fails."""
    with pytest.raises(UsageError, match="--dom-layout xen: variant lockless has one layout"):
        config.validate(RunConfig(variant="lockless", dom_layout="xen"))
    with pytest.raises(UsageError, match="choose one of: xen, padded"):
        config.validate(RunConfig(variant="locked", dom_layout="tight"))
    assert config.validate(RunConfig(variant="locked")).dom_layout == "xen"
    assert config.validate(RunConfig(variant="lockless")).dom_layout is None
    r = testbed_cli("run", "--variant", "lockless", "--dom-layout", "xen", "--duration", "0.1")
    assert r.returncode == 2 and r.stdout == "" and len(r.stderr.splitlines()) == 1, r.stdout + r.stderr
    assert "--dom-layout" in r.stderr and "locked: xen, padded" in r.stderr
