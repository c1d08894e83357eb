"""shared.layout and shared.arena: cache-line layout, named segments, attach, removal, stale segments."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap

import multiprocess as mp
import numpy as np
import pytest

import testbed.shared as shared
from testbed.shared import CACHE_LINE, Arena, Field, Layout
from testbed.shared import arena as arena_mod

from conftest import REPO, SHM_DIR, cli_env, segments_owned_by, testbed_cli

MIXED = Layout((
    Field("flag", "int8", (1,)),
    Field("words", "int64", (5,)),
    Field("odd", "int16", (3, 7)),
    Field("rows8", "int8", (3, 5), per_vcpu=True),
    Field("rows32", "int32", (4, 17), per_vcpu=True),
    Field("rows64", "int64", (2, 8), per_vcpu=True),          # exactly one line per row
    Field("cube", "uint16", (3, 5, 7), per_vcpu=True),        # a row of several axes is exposed flat
    Field("f", "float64", (9,)),
    Field("empty", "int64", (0,)),
    Field("one", "uint8", (2, 1), per_vcpu=True),
))


def _declared(f: Field) -> tuple:
    if not f.per_vcpu:
        return f.shape
    return f.shape[0], int(np.prod(f.shape[1:], dtype=np.int64))


# --- Layout --------------------------------------------------------------------------------


def test_layout_offsets_are_cache_line_aligned_and_disjoint():
    offs = MIXED.offsets()
    assert set(offs) == {f.name for f in MIXED.fields}
    spans = []
    for f in MIXED.fields:
        assert offs[f.name] % CACHE_LINE == 0, f.name
        spans.append((offs[f.name], offs[f.name] + f.nbytes(), f.name))
    spans.sort()
    for (a0, a1, an), (b0, b1, bn) in zip(spans, spans[1:]):
        assert a1 <= b0, f"{an} overlaps {bn}"
    assert MIXED.size % CACHE_LINE == 0 and MIXED.size >= spans[-1][1]


@pytest.mark.parametrize("dtype", ["int8", "uint16", "int32", "float32", "int64", "float64", "complex128"])
@pytest.mark.parametrize("row", [(1,), (3,), (8,), (9,), (64,), (65,), (2, 3), (4, 4, 4)])
def test_per_vcpu_rows_are_padded_to_whole_cache_lines(dtype, row):
    lay = Layout((Field("x", dtype, (3, *row), per_vcpu=True),))
    view = lay.views(bytearray(lay.size))["x"]
    items = int(np.prod(row))
    assert view.dtype == np.dtype(dtype)
    assert view.shape[0] == 3 and view.shape[1] >= items
    assert view.strides[0] % CACHE_LINE == 0
    assert view.strides[0] - items * view.itemsize < CACHE_LINE      # no more padding than needed
    assert view.flags.c_contiguous


@pytest.mark.parametrize("dtype", ["S3", "V12", "V24"])
def test_per_vcpu_rows_of_odd_sized_items_never_share_a_cache_line(dtype):
    """An item size that does not divide 64 must still give whole-line rows (or be refused)."""
    try:
        lay = Layout((Field("x", dtype, (2, 1), per_vcpu=True),))
    except ValueError:
        return
    view = lay.views(bytearray(lay.size))["x"]
    assert view.strides[0] % CACHE_LINE == 0, f"{dtype}: row stride {view.strides[0]} bytes"


def test_views_have_declared_dtypes_shapes_and_do_not_alias():
    with Arena.create(MIXED) as arena:
        views = arena.views
        base = np.frombuffer(arena.shm.buf, dtype=np.uint8)
        offs = MIXED.offsets()
        for i, f in enumerate(MIXED.fields):
            v = views[f.name]
            assert v.dtype == np.dtype(f.dtype), f.name
            if f.per_vcpu:
                assert v.shape[0] == f.shape[0] and v.shape[1] >= _declared(f)[1]
                assert v.strides[0] % CACHE_LINE == 0
            else:
                assert v.shape == f.shape
            if v.size:
                assert v.ctypes.data % CACHE_LINE == 0, f.name
                assert v.ctypes.data - base.ctypes.data == offs[f.name]
            v[...] = i + 1
        for i, f in enumerate(MIXED.fields):        # each array kept what was written to it
            assert (views[f.name] == i + 1).all(), f.name
        del base, views, v


def test_layout_rejects_duplicate_names():
    with pytest.raises(ValueError, match="duplicate"):
        Layout((Field("a", "int64", (1,)), Field("b", "int8", (2,)), Field("a", "int32", (3,))))
    with pytest.raises(ValueError, match="duplicate"):
        Layout((Field("a", "int64", (1,)),)) + Layout((Field("a", "int64", (2,)),))


def test_layout_rejects_negative_dimensions():
    with pytest.raises(ValueError):
        Layout((Field("a", "int64", (2, -1), per_vcpu=True),))


# --- Arena ---------------------------------------------------------------------------------


@pytest.mark.usefixtures("no_leftovers")
def test_create_names_attach_and_destroy():
    arena = Arena.create(MIXED)
    try:
        assert re.fullmatch(rf"testbed_{os.getpid()}_[0-9a-f]{{8}}", arena.name), arena.name
        assert arena_mod.owner_of(arena.name) == os.getpid()
        assert os.path.exists(os.path.join(SHM_DIR, arena.name))
        assert arena.name in shared.list_segments()
        assert arena.name not in shared.stale_segments()       # its owner (we) is alive
        other = Arena.attach(arena.name, MIXED)
        try:
            arena["words"][:] = [1, 2, 3, 4, 5]
            assert other["words"].tolist() == [1, 2, 3, 4, 5]
            other["rows32"][2, :17] = 7
            assert (arena["rows32"][2, :17] == 7).all() and not arena["rows32"][1].any()
            other.destroy()                  # not the owner: drops its mapping, leaves the segment
            assert os.path.exists(os.path.join(SHM_DIR, arena.name))
        finally:
            other.close()
    finally:
        arena.destroy()
    assert not os.path.exists(os.path.join(SHM_DIR, arena.name))
    assert arena.views == {}
    arena.destroy()                          # idempotent
    arena.unlink()


def _child_writes(name, layout):
    a = Arena.attach(name, layout)
    a["words"][0] = os.getpid()
    a["rows64"][1, 3] = 42
    a.close()


@pytest.mark.usefixtures("no_leftovers")
def test_forked_child_attaches_by_name_and_shares_memory():
    with Arena.create(MIXED) as arena:
        p = mp.get_context("fork").Process(target=_child_writes, args=(arena.name, MIXED))
        p.start()
        p.join(30)
        assert p.exitcode == 0
        assert arena["words"][0] == p.pid
        assert arena["rows64"][1, 3] == 42
    assert not os.path.exists(os.path.join(SHM_DIR, arena.name))


RESOURCE_TRACKER_SCRIPT = textwrap.dedent("""
    import os, sys
    import multiprocess as mp
    from testbed.shared import Arena, Field, Layout

    lay = Layout((Field("c", "int64", (8,)), Field("r", "int64", (2, 3), per_vcpu=True)))

    def child(name):
        a = Arena.attach(name, lay)
        a["c"][0] += 1
        a["r"][1, 0] = 5
        a.close()

    arena = Arena.create(lay)
    procs = [mp.get_context("fork").Process(target=child, args=(arena.name,)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    assert [p.exitcode for p in procs] == [0, 0], [p.exitcode for p in procs]
    assert arena["c"][0] == 2 and arena["r"][1, 0] == 5
    name = arena.name
    arena.destroy()
    assert not os.path.exists("/dev/shm/" + name)
    print(name)
""")


@pytest.mark.usefixtures("no_leftovers")
def test_no_resource_tracker_warning_on_create_attach_destroy():
    out = subprocess.run([sys.executable, "-c", RESOURCE_TRACKER_SCRIPT], cwd=REPO, capture_output=True,
                         text=True, timeout=60, env=cli_env())
    assert out.returncode == 0, out.stderr
    assert "resource_tracker" not in out.stderr and "leaked" not in out.stderr, out.stderr
    assert out.stderr.strip() == ""
    name = out.stdout.strip()
    assert name.startswith("testbed_") and not os.path.exists(os.path.join(SHM_DIR, name))


# --- stale segments --------------------------------------------------------------------------


def _dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def _make_stale_segment() -> str:
    """A segment named as if created by a process that has since died, untracked as the arena does."""
    pid = _dead_pid()
    name = f"testbed_{pid}_abcd1234"
    shm = arena_mod._open(name, create=True, size=4096)
    shm.buf[:4] = b"dead"
    shm.close()
    assert os.path.exists(os.path.join(SHM_DIR, name))
    return name


@pytest.mark.usefixtures("exclusive", "no_leftovers")
def test_stale_segment_is_listed_and_removed():
    name = _make_stale_segment()
    live = Arena.create(MIXED)                  # ours, owner alive: must be kept
    try:
        assert name in shared.list_segments()
        assert name in shared.stale_segments()
        assert live.name not in shared.stale_segments()
        removed = shared.remove_stale()
        assert name in removed
        assert not os.path.exists(os.path.join(SHM_DIR, name))
        assert os.path.exists(os.path.join(SHM_DIR, live.name))
        assert name not in shared.remove_stale()     # nothing left to remove
    finally:
        live.destroy()
        if os.path.exists(os.path.join(SHM_DIR, name)):
            os.unlink(os.path.join(SHM_DIR, name))


@pytest.mark.usefixtures("exclusive", "no_leftovers")
def test_cleanup_command_removes_stale_segment_and_keeps_live_ones():
    name = _make_stale_segment()
    live = Arena.create(MIXED)
    try:
        out = testbed_cli("cleanup", timeout=60)
        assert out.returncode == 0, out.stderr
        assert f"removed stale segment /dev/shm/{name}" in out.stdout
        assert f"kept /dev/shm/{live.name}" in out.stdout
        assert not os.path.exists(os.path.join(SHM_DIR, name))
        assert os.path.exists(os.path.join(SHM_DIR, live.name))
    finally:
        live.destroy()
        if os.path.exists(os.path.join(SHM_DIR, name)):
            os.unlink(os.path.join(SHM_DIR, name))
    assert not segments_owned_by(os.getpid())


def test_owner_of_parses_only_testbed_names():
    assert arena_mod.owner_of("testbed_123_abcd1234") == 123
    assert arena_mod.owner_of("testbed_x_abcd1234") is None
    assert arena_mod.owner_of("other_123_abcd1234") is None
    assert arena_mod.owner_of("testbed_123") is None
    assert arena_mod.owner_of("testbed_1_2_3") is None
