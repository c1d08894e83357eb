"""The after-run checks fire on real state a vCPU loop produced, corrupted in one word.

``oracle.lost_writes`` (frame counters against the writes each vCPU meant) and the
stress run's quiescent check (``Stressor._quiescent``: the variant's invariants and
the lost-writes check on paused vCPUs) are otherwise only ever seen passing. Here
``loops.run_ops`` runs a few hundred operations per vCPU on private state; the
checks must find nothing on it, then find the one corruption: a frame counter one
short (a lost write) or the inuse bit of a free slot set (a leaked slot).

Mutations tried: in ``oracle.lost_writes``, ``np.maximum(actual - meant, 0)``
(counts extra writes instead of lost ones): the frame-counter cases fail on 0 lost;
in ``Stressor._quiescent``, ``found["lost_writes"] = lost`` only if the variant check
found something: the quiescent lost-write case fails.
"""

from __future__ import annotations

import numpy as np
import pytest

from testbed import abi, harness, kernels, oracle
from testbed.stress import StressPlan, Stressor
from testbed.variants import locked, lockless

try:
    from test_shipped_loop import Shipped, make_cfg
except ImportError:  # tests/ made a package
    from tests.test_shipped_loop import Shipped, make_cfg

VARIANTS = [("locked", "ticket"), ("lockless", None)]


def real_state(variant, lock):
    s = Shipped(make_cfg(variant, lock, "uniform", seed=5))
    for _ in range(300):
        for v in range(s.cfg.vcpus):
            assert s.step(v) == abi.ST_OK
    return s


def lose_a_write(s):
    col = kernels.counter_col(1)
    mfn = int(np.flatnonzero(s.views["frames"][:, col])[0])
    s.views["frames"][mfn, col] -= 1


def leak_a_slot(s):
    cfg = s.cfg
    if cfg.variant == "locked":
        dbits, slots = s.views["dbits"], cfg.vcpus * cfg.entries
        free = next(i for i in range(slots) if not (int(dbits[i // 64]) >> (i % 64)) & 1)
        dbits[free // 64] |= np.int64(1) << np.int64(free % 64)
    else:
        _, _, _, iu, _ = lockless._offsets(cfg.hash_entries, cfg.entries)
        row = s.views["vst"][0]
        free = next(i for i in range(cfg.entries) if not (int(row[iu + i // 64]) >> (i % 64)) & 1)
        row[iu + free // 64] |= np.int64(1) << np.int64(free % 64)


@pytest.mark.parametrize("variant,lock", VARIANTS)
def test_lost_writes_finds_a_frame_counter_one_short(variant, lock):
    s = real_state(variant, lock)
    lost, written, counted = oracle.lost_writes(s.views, s.cfg)
    assert lost == 0 and written == counted == int(s.views["stats"][:2, abi.S_WRITES].sum()) > 0
    lose_a_write(s)
    assert oracle.lost_writes(s.views, s.cfg) == (1, written, written - 1)


@pytest.mark.parametrize("variant,lock", VARIANTS)
def test_variant_check_finds_a_leaked_slot(variant, lock):
    s = real_state(variant, lock)
    assert not any(oracle.variant_checks(s.views, s.cfg).values())
    leak_a_slot(s)
    assert oracle.variant_checks(s.views, s.cfg)["slot_leaks"] == 1


class _Proc:
    exitcode = None
    pid = 0


def quiescent(s) -> Stressor:
    """One quiescent check of the stress run on ``s``, its vCPUs shown paused between operations."""
    st = Stressor(StressPlan(check_s=1.0), [0], seed=1)
    st.state, st.procs, st.views, st.t0 = harness.RunState(cfg=s.cfg, cores=[0]), [_Proc(), _Proc()], s.views, 0.0
    s.views["stats"][:2, abi.S_STATE] = abi.W_PAUSED
    st._quiescent()
    assert st.checks_run == 1 and s.views["ctl"][abi.C_PAUSE] == 0
    return st


@pytest.mark.parametrize("corrupt,key", [(None, None), (lose_a_write, "lost_writes"), (leak_a_slot, "slot_leaks")])
@pytest.mark.parametrize("variant,lock", VARIANTS)
def test_quiescent_stress_check_fires(variant, lock, corrupt, key):
    s = real_state(variant, lock)
    if corrupt is not None:
        corrupt(s)
    st = quiescent(s)
    if corrupt is None:
        assert st.periodic == []
        return
    (found,) = st.periodic
    assert found[key] == 1 and found["violations"] == 1, found
    assert st.summary()["periodic_violations"] == 1
