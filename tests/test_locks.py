"""testbed/locks.py in one process: the owner word, the counters and the handoff accounting of each
lock, the Python readers on constructed states, and where each lock's words sit, in Python and in the C port.

Across processes (mutual exclusion itself): tests/test_atomics.py."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from testbed import abi, dom_layout, locks
from testbed.variants import locked

VCPUS = 2
CASES = [(lock, layout) for lock in locks.LOCKS for layout in dom_layout.DOM_LAYOUTS]
IDS = [f"{lk}-{ly}" for lk, ly in CASES]


def _dom():
    return np.zeros(dom_layout.DOM_WORDS + 8 * VCPUS, np.int64)


def _srows():
    return np.zeros((VCPUS, abi.N_STATS), np.int64)


def _take(dom, srows, vcpu, lock, layout):
    return locks.acquire(dom, srows[vcpu], vcpu, locks.LOCKS.index(lock), dom_layout.DOM_LAYOUTS.index(layout))


def _give(dom, my, srows, vcpu, lock, layout, t_hold=0):
    locks.release(dom, my, srows[vcpu], t_hold, vcpu, locks.LOCKS.index(lock), dom_layout.DOM_LAYOUTS.index(layout))


@pytest.mark.parametrize("lock,layout", CASES, ids=IDS)
def test_uncontended_acquire_and_release(lock, layout):
    """The owner word names the holder while it holds and nobody after; one acquisition counted,
    none contended, no handoff; a measured hold is counted once.

    Mutation tried: ``dom[own] = 0`` left out of the xen ticket branch of ``release``: the lock
    reads held (and its holder vCPU 1) after the release."""
    dom, srows = _dom(), _srows()
    assert locks.is_free(dom, layout, lock) and locks.holder(dom, layout) is None
    for vcpu in (1, 0, 1):
        my = _take(dom, srows, vcpu, lock, layout)
        assert locks.holder(dom, layout) == vcpu and not locks.is_free(dom, layout, lock)
        assert locks.waiters(dom, layout, lock, VCPUS) == 0
        _give(dom, my, srows, vcpu, lock, layout, t_hold=1)
        assert locks.is_free(dom, layout, lock) and locks.holder(dom, layout) is None, dom.tolist()
    assert srows[:, abi.S_LOCK_ACQ].tolist() == [1, 2]
    assert srows[:, abi.S_LOCK_HOLD_SAMPLES].tolist() == [1, 2]
    for col in (abi.S_LOCK_CONTENDED, abi.S_HANDOFFS, abi.S_LOCK_REACQ, abi.S_PROGRESS):
        assert not srows[:, col].any(), abi.COUNTER_NAMES[col]
    if lock == "ticket":
        assert locks.ticket_snapshot(dom, layout) == (3, 3)


@pytest.mark.parametrize("layout", dom_layout.DOM_LAYOUTS)
def test_tas_counts_a_reacquisition_and_a_handoff(layout):
    """With a waiter backing off (the waiter count set by hand), a release stamps the handoff; the
    releaser taking the lock back counts a reacquisition, another vCPU taking it a handoff.

    Mutation tried: ``if dom[hfrom] == vcpu + 1`` made ``if False`` in ``acquire``: the
    reacquisition is counted as a handoff."""
    dom, srows = _dom(), _srows()
    _, hts, hfrom = locks.owner_words(dom_layout.DOM_LAYOUTS.index(layout))
    dom[dom_layout.D_TAS_WAITERS] = 1
    assert locks.waiters(dom, layout, "tas", VCPUS) == 1 and not locks.is_free(dom, layout, "tas")
    _give(dom, _take(dom, srows, 0, "tas", layout), srows, 0, "tas", layout)
    assert dom[hts] != 0 and dom[hfrom] == 1            # released to a waiter, by vCPU 0
    _take(dom, srows, 0, "tas", layout)                 # vCPU 0 again, ahead of the waiter
    assert dom[hts] == 0 and srows[0, abi.S_LOCK_REACQ] == 1 and srows[0, abi.S_HANDOFFS] == 0
    _give(dom, 0, srows, 0, "tas", layout)
    _take(dom, srows, 1, "tas", layout)                 # the waiter's turn
    assert srows[1, abi.S_HANDOFFS] == 1 and srows[1, abi.S_HANDOFF_CYCLES] >= 0 and srows[1, abi.S_LOCK_REACQ] == 0
    _give(dom, 0, srows, 1, "tas", layout)
    dom[dom_layout.D_TAS_WAITERS] = 0
    assert locks.is_free(dom, layout, "tas")


@pytest.mark.parametrize("layout", dom_layout.DOM_LAYOUTS)
def test_mcs_hands_over_to_a_queued_successor(layout):
    """vCPU 1 queued behind the holder (its node linked by hand, as its ``mcs_lock`` would): the
    release writes vCPU 1's node, the one word it spins on, and stamps the handoff; no node is
    left waiting.

    Mutation tried: ``mcs_unlock`` storing into the releaser's own node: vCPU 1 is still waiting."""
    dom, srows = _dom(), _srows()
    lx = dom_layout.DOM_LAYOUTS.index(layout)
    lw = locks.lock_word(lx, locks.LOCK_MCS)
    _, hts, hfrom = locks.owner_words(lx)
    _take(dom, srows, 0, "mcs", layout)
    dom[lw] = 2                                         # vCPU 1 swapped itself into the tail ...
    dom[locks.mcs_node(1) + locks.N_LOCKED] = 1
    dom[locks.mcs_node(0) + locks.N_NEXT] = 2           # ... and linked behind vCPU 0
    assert locks.waiters(dom, layout, "mcs", VCPUS) == 1
    _give(dom, 0, srows, 0, "mcs", layout)
    assert dom[locks.mcs_node(1) + locks.N_LOCKED] == 0 and locks.waiters(dom, layout, "mcs", VCPUS) == 0
    assert dom[hts] != 0 and dom[hfrom] == 1
    assert dom[lw] == 2 and not locks.is_free(dom, layout, "mcs")      # vCPU 1's now
    _give(dom, 0, srows, 1, "mcs", layout)              # with no successor, the tail swings back
    assert locks.is_free(dom, layout, "mcs")


def test_split_ticket_waiters_and_snapshot():
    """Padded layout: head and tail two words; a tail two past the head is one holder, one waiter."""
    dom = _dom()
    lw = locks.words("padded")["lock"]
    dom[lw], dom[lw + 1] = 5, 7
    assert locks.ticket_snapshot(dom, "padded") == (5, 7)
    assert locks.waiters(dom, "padded", "ticket", VCPUS) == 1 and not locks.is_free(dom, "padded", "ticket")
    dom[lw] = 7
    assert locks.waiters(dom, "padded", "ticket", VCPUS) == 0 and locks.is_free(dom, "padded", "ticket")


@pytest.mark.parametrize("lock,layout", CASES, ids=IDS)
def test_each_lock_word_is_apart_from_the_mapcache_words_and_the_contended_lines(lock, layout):
    """A lock's words, the design's words and the words only contention touches never overlap."""
    w = locked.dom_words(layout, lock)
    assert len(set(w.values())) == len(w), w
    taken = set(w.values()) | ({w["lock"] + 1} if lock == "ticket" and layout == "padded" else set())
    assert max(taken) < dom_layout.D_TAS_WAITERS and 0 not in taken         # word 0: the TLB clock
    assert locks.mcs_node(0) >= dom_layout.D_TAS_WAITERS + 8 and locks.mcs_node(0) % 8 == 0
    assert locks.lock_word(dom_layout.DOM_LAYOUTS.index(layout), locks.LOCKS.index(lock)) == w["lock"]


def test_locked_runs_the_shipped_locks():
    """locked's kernels call these very functions (no copy of the lock stays in the design)."""
    assert locked.acquire is locks.acquire and locked.release is locks.release
    assert locked.LOCKS == locks.LOCKS and locked.DOM_LAYOUTS == dom_layout.DOM_LAYOUTS
    assert not hasattr(locked, "lock") and not hasattr(locked, "unlock")


# --- the C port's copy of the words ---------------------------------------------------------

CSRC = Path(__file__).resolve().parent.parent / "testbed" / "csrc"
MIRRORED = ("X_CURSOR", "X_LOCK", "X_EPOCH", "X_TLBFLUSH_TS", "X_LOCK_OWNER", "X_HANDOFF_TSC", "X_HANDOFF_FROM",
            "D_LOCK_HEAD", "D_LOCK_TAIL", "D_LOCK_OWNER", "D_MCS_TAIL", "D_TAS", "D_HANDOFF_TSC", "D_HANDOFF_FROM",
            "D_CURSOR", "D_EPOCH", "D_TLBFLUSH_TS", "D_TAS_WAITERS", "D_MCS_NODES", "N_NEXT", "N_LOCKED",
            "LOCK_TICKET", "LOCK_MCS", "LOCK_TAS", "LAYOUT_XEN", "LAYOUT_PADDED", "TAS_BACKOFF_MAX", "TICKET_MASK")


def c_constants(texts) -> dict[str, set[int]]:
    """Every ``#define NAME <integer>`` and ``enum { NAME = <integer> }`` of the C sources ``texts``."""
    out: dict[str, set[int]] = {}
    number = r"(0[xX][0-9a-fA-F]+|\d+)(?:[uU]?[lL]{0,2})"
    for src in texts:
        pairs = re.findall(rf"^#define\s+([A-Z][A-Z0-9_]*)\s+{number}\s*(?:/[*/].*)?$", src, re.M)
        for body in re.findall(r"enum\s*\{([^}]*)\}", src):
            pairs += re.findall(rf"([A-Z][A-Z0-9_]*)\s*=\s*{number}", body)
        for name, value in pairs:
            out.setdefault(name, set()).add(int(value, 0))
    return out


def c_disagreements(texts) -> dict:
    """The mirrored names the C declares with another value than Python's, or not at all."""
    c = c_constants(texts)
    py = {name: getattr(locks, name, getattr(dom_layout, name, None)) for name in MIRRORED}
    return {name: (sorted(c.get(name, ())), value) for name, value in py.items() if c.get(name) != {value}}


def test_the_c_port_lays_out_and_numbers_the_locks_as_python_does():
    """The C port (testbed/csrc, wherever in it the words are declared) has each word, lock and layout
    number of dom_layout.py and locks.py, once and with the same value. The control: the same
    sources with the C's ticket word moved are caught."""
    texts = [p.read_text() for p in sorted(CSRC.rglob("*")) if p.suffix in (".c", ".h")]
    assert c_disagreements(texts) == {}
    moved = [re.sub(r"^#define X_LOCK 9\b", "#define X_LOCK 12", t, flags=re.M) for t in texts]
    assert moved != texts and c_disagreements(moved) == {"X_LOCK": ([12], 9)}
