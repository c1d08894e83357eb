"""The layout contract (testbed/abi.py): ids unique within each family, inside the family's size, and
spelled the same in the C port.

Mutations that make these tests fail: give any new slot an id already taken (e.g. ``S_IRQ = 53`` beside
``S_CPU_NS = 53``: test_ids_are_unique_within_each_family); set ``P_LOCK = 32`` (test_ids_fit_their_arrays);
in testbed/csrc/testbed_op.c change ``P_SLACK = 23`` to ``P_SLACK = 26`` (test_the_c_port_agrees).
"""

from __future__ import annotations

import re
from collections import defaultdict

import pytest

from testbed import abi, config, kernels

from conftest import REPO

# family prefix -> the size its ids index (None: a set of values, not an array)
FAMILIES = {"P_": abi.N_PARAMS, "S_": abi.N_STATS, "C_": abi.N_CTL, "M_": abi.N_MAIL, "W_": None, "ST_": None,
            "WL_": None, "SCHED_": None, "V_": abi.V_RESERVED, "RQ_": None}
NOT_IDS = {"SCHED_NAMES", "STATUS_NAMES", "V_RESERVED"}


def family_ids(prefix: str) -> dict[str, int]:
    return {name: value for name, value in vars(abi).items()
            if name.startswith(prefix) and name.isupper() and isinstance(value, int) and name not in NOT_IDS}


def test_every_family_has_ids():
    for prefix in FAMILIES:
        assert family_ids(prefix), prefix


@pytest.mark.parametrize("prefix", FAMILIES)
def test_ids_are_unique_within_each_family(prefix):
    seen = defaultdict(list)
    for name, value in family_ids(prefix).items():
        seen[value].append(name)
    clashes = {v: names for v, names in seen.items() if len(names) > 1}
    assert not clashes, f"{prefix}* ids used twice: {clashes}"


@pytest.mark.parametrize("prefix", [p for p, n in FAMILIES.items() if n is not None])
def test_ids_fit_their_arrays(prefix):
    size = FAMILIES[prefix]
    bad = {name: v for name, v in family_ids(prefix).items() if not 0 <= v < size}
    assert not bad, f"{prefix}* ids outside 0..{size - 1}: {bad}"


def test_ids_are_listed_in_order():
    """The source lists each family in increasing order, so a free id is easy to see."""
    text = (REPO / "testbed" / "abi.py").read_text()
    for prefix in FAMILIES:
        ids = family_ids(prefix)
        order = [m.group(1) for m in re.finditer(rf"^({prefix}[A-Z0-9_]+) = ", text, re.M) if m.group(1) in ids]
        values = [ids[name] for name in order]
        assert values == sorted(values), f"{prefix}* out of order: {order}"


def test_counters_and_names_agree():
    # counters summed into totals: the first N_COUNTERS columns, and the oracle's and the cost
    # model's counters past the harness's own words (S_HEARTBEAT..S_CPU_NS), all in the row
    harness_words = range(abi.S_HEARTBEAT, abi.S_CPU_NS + 1)
    assert all(0 <= s < abi.N_STATS and s not in harness_words for s in abi.COUNTER_NAMES)
    assert len(set(abi.COUNTER_NAMES.values())) == len(abi.COUNTER_NAMES)
    assert set(abi.STATUS_NAMES) == set(family_ids("ST_").values())
    assert set(abi.SCHED_NAMES) == set(family_ids("SCHED_").values())


def test_workload_ids_are_the_configs_and_the_kernels():
    assert {wid for wid, _ in config.WORKLOADS.values()} == set(family_ids("WL_").values())
    for name in ("WL_UNIFORM", "WL_HOT", "WL_PTWALK", "WL_GUEST", "WL_TIMERS", "FRAME_HDR"):
        assert getattr(kernels, name) == getattr(abi, name)       # the loop reads the contract's own


def test_frame_geometry():
    for vcpus in (1, 2, 63, 64, 300):
        words = abi.frame_words(vcpus)
        assert words >= 512 and abi.counter_col(vcpus - 1) + 8 <= words
        assert abi.counter_col(0) == abi.FRAME_HDR and abi.counter_col(1) - abi.counter_col(0) == 8   # a line each


def test_the_c_port_agrees():
    """Every id the C port declares (enum members and #defines of plain numbers) has abi.py's value."""
    src = (REPO / "testbed" / "csrc" / "testbed_op.c").read_text()
    declared = {}
    for body in re.findall(r"enum\s*\{([^}]*)\}", src):
        for name, value in re.findall(r"([A-Z][A-Z0-9_]*)\s*=\s*(\d+)", body):
            declared[name] = int(value)
    for name, value in re.findall(r"^#define\s+([A-Z][A-Z0-9_]*)\s+(\d+)\s*$", src, re.M):
        declared[name] = int(value)
    shared = {name: v for name, v in declared.items() if hasattr(abi, name)}
    assert len(shared) > 40, sorted(shared)                       # the parser found the tables
    wrong = {name: (v, getattr(abi, name)) for name, v in shared.items() if getattr(abi, name) != v}
    assert not wrong, f"C port value, abi.py value: {wrong}"
