"""Shared helpers and fixtures for the testbed tests.

Tests that load both CPUs (the harness, the CLI runs, the cross-process atomics)
or that create or remove stale segments take one exclusive file lock, so that
under ``pytest -n auto`` they neither steal each other's cores nor let one test's
``remove_stale`` (every ``harness.run`` calls it) eat another test's
deliberately stale segment. Light tests run beside them unlocked.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import pytest

from testbed import abi
from testbed.shared import arena as arena_mod

REPO = Path(__file__).resolve().parent.parent

# Tests that stop a command with SIGINT need it to reach the child as Ctrl-C would. A shell
# without job control starts a background job with SIGINT ignored, and an ignored signal
# stays ignored across fork and exec: the command would never see it. A handler does not
# survive exec, so with one installed here every child starts with SIGINT's default
# disposition (Python then turns it into KeyboardInterrupt), however the suite was started.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
SHM_DIR = "/dev/shm"

# The slow tier: tests that take many seconds each (fresh kernel caches, a wheel in a fresh
# environment, long end-to-end runs) run only with TESTBED_SLOW=1, as `.ci/run` does; the
# README's test command leaves them out, to stay within its time.
SLOW_TIER = bool(os.environ.get("TESTBED_SLOW"))


def slow(why: str):
    """Mark a test (or a parameter set) for the slow tier, saying why it is slow."""
    return pytest.mark.skipif(not SLOW_TIER, reason=f"{why}: the slow tier, TESTBED_SLOW=1 (.ci/run runs it)")

LOCK_PATH = os.path.join(tempfile.gettempdir(), f"testbed-tests-{os.getuid()}.lock")
LOCK_WAIT_S = 600.0


# --- the compiled loops -----------------------------------------------------------------


def _standalone(irq: bool) -> None:
    """Call the kernels the tests drive one operation at a time (``kernels.map_page`` and
    ``unmap_page``, the if-chain over every design; with ``irq`` the interrupt context and
    ``kernels.irq_take`` too) once, with the argument types the tests pass: that compiles them."""
    from testbed import config as cfgmod
    from testbed import harness, kernels, tlb
    from testbed import variants as registry

    cfg = cfgmod.validate(cfgmod.RunConfig(variant=registry.REAL[0].name, vcpus=1, frames=1,
                                           cost_flush_one=0, cost_flush_all=0, cost_walk=0))
    p = cfgmod.params(cfg)
    layout = harness.build_layout(cfg)
    w = layout.views(bytearray(layout.size))
    harness.init_state(w, cfg)
    args = (p, w["dom"], w["pte"], w["dbits"], w["vst"][0], w["stats"][0],
            tlb.make_tlb(int(p[abi.P_TLB_SETS]), int(p[abi.P_TLB_WAYS])))
    ctx = ((w["frames"], w["expect"][0]),) if irq else ()
    kernels.unmap_page(0, kernels.map_page(0, 0, *args, *ctx), *args, *ctx)
    if irq:
        kernels.irq_take(0, *args, w["frames"], w["expect"][0], 0)


def pytest_sessionstart(session):
    """Under ``-n``, the controller compiles every loop the suite runs before the workers start.

    Each worker would otherwise compile the loops its tests meet, inside those tests, the
    same loops in both workers at once and one CPU each (``jitcache.prepare`` runs one
    compiling process per CPU, and the workers then load the loops from the disk cache). The
    kernels the tests call one operation at a time (``_standalone``) are compiled beside them.
    A warm cache costs a look at a few index files. Without ``-n`` (one test file while
    working on it) each test compiles what it needs, as before.
    """
    config = session.config
    if hasattr(config, "workerinput") or not getattr(config.option, "numprocesses", None):
        return
    import functools

    from testbed import jitcache, kernels

    extra = [("standalone map and unmap", 1 << 21, functools.partial(_standalone, False), kernels.map_page),
             ("standalone interrupt", 1 << 21, functools.partial(_standalone, True), kernels.irq_take)]
    t0 = time.perf_counter()
    if jitcache.prepare(jitcache.every_loop(), extra=extra):
        sys.stderr.write(f"compiled the suite's loops in {time.perf_counter() - t0:.0f} s\n")


# --- segments and processes ------------------------------------------------------------


def testbed_segments() -> set[str]:
    try:
        return {n for n in os.listdir(SHM_DIR) if n.startswith("testbed_")}
    except FileNotFoundError:
        return set()


def segments_owned_by(*pids: int) -> set[str]:
    """Segments whose name carries one of ``pids`` as owner (testbed_<pid>_<hex>)."""
    wanted = set(pids)
    return {n for n in testbed_segments() if arena_mod.owner_of(n) in wanted}


def dead_owners(names) -> set[str]:
    """The segments among ``names`` whose owner no longer runs: left behind (other tests' live ones are not)."""
    owners = {n: arena_mod.owner_of(n) for n in names}
    return {n for n, pid in owners.items() if pid is not None and not alive(pid)}


def alive(pid: int) -> bool:
    """True if ``pid`` is a running (not zombie) process."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_gone(pids, timeout: float) -> list[int]:
    """Wait until none of ``pids`` runs; the ones still running after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        left = [p for p in pids if alive(p)]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.02)


def kill_pids(pids) -> None:
    """SIGKILL processes this test started (by pid), ignoring the ones already gone."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def unlink_segments(names) -> None:
    for n in names:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(SHM_DIR, n))


# --- the command line ------------------------------------------------------------------


def cli_env(extra: dict | None = None) -> dict:
    env = dict(os.environ)
    env.pop("NUMBA_DISABLE_JIT", None)
    env.pop("COLUMNS", None)            # into a pipe, whole lines (output.width_for), however pytest was started
    # the child imports this checkout's testbed, whatever its folder, not the one installed
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env["PYTHONUNBUFFERED"] = "1"
    for k, v in (extra or {}).items():
        if v is None:
            env.pop(k, None)            # None: not in the child's environment
        else:
            env[k] = v
    return env


# pids of the command-line processes this test process started: the segments they (and
# their children) name as owner are theirs to remove, which ``no_leftovers`` checks
STARTED: list[int] = []


def track(pid: int) -> int:
    """Record a process a test started (``no_leftovers`` then looks for its segments too)."""
    STARTED.append(pid)
    return pid


def testbed_cli(*args, cwd=None, timeout: float = 120, env: dict | None = None) -> subprocess.CompletedProcess:
    """``python -m testbed ARGS``, run to completion; its pid is tracked."""
    cmd = [sys.executable, "-m", "testbed", *map(str, args)]
    with subprocess.Popen(cmd, cwd=cwd or REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env=cli_env(env)) as p:
        track(p.pid)
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.communicate()
            raise
    return subprocess.CompletedProcess(cmd, p.returncode, out, err)


# helpers whose names start with "test", but which are no tests when a module imports them
testbed_cli.__test__ = False
testbed_segments.__test__ = False


class LineReader:
    """Reads a pipe in a thread, so that a test can wait for a line with a timeout."""

    def __init__(self, stream):
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._done = False
        self._t = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._t.start()

    def _pump(self, stream):
        for line in stream:
            with self._cond:
                self.lines.append(line)
                self._cond.notify_all()
        with self._cond:
            self._done = True
            self._cond.notify_all()

    def wait_for(self, predicate, timeout: float) -> str | None:
        deadline = time.monotonic() + timeout
        seen = 0
        with self._cond:
            while True:
                while seen < len(self.lines):
                    if predicate(self.lines[seen]):
                        return self.lines[seen]
                    seen += 1
                left = deadline - time.monotonic()
                if self._done or left <= 0:
                    return None
                self._cond.wait(left)

    def text(self, join_timeout: float = 5.0) -> str:
        self._t.join(join_timeout)
        with self._cond:
            return "".join(self.lines)


# --- fixtures --------------------------------------------------------------------------


@contextlib.contextmanager
def heavy_lock():
    """The suite-wide lock for CPU-heavy or stale-segment work (see the module docstring)."""
    fd = os.open(LOCK_PATH, os.O_RDWR | os.O_CREAT, 0o666)
    deadline = time.monotonic() + LOCK_WAIT_S
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    pytest.fail(f"could not take {LOCK_PATH} in {LOCK_WAIT_S:.0f} s")
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)          # releases the lock


@pytest.fixture
def exclusive():
    """Hold the suite-wide lock for the whole test."""
    with heavy_lock():
        yield


PR_SET_CHILD_SUBREAPER = 36


def set_subreaper(on: bool) -> bool:
    """Make this process the reaper of its orphaned descendants (Linux prctl); False if refused."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def leftovers(before: set[int], since: int, wait_s: float = 5.0) -> tuple[list, set[str]]:
    """(processes, segments) left behind since the snapshot ``before`` / ``STARTED[since:]``.

    Processes: running descendants of this process not in ``before``; with this
    process a subreaper, that includes what a finished CLI left orphaned. Segments: those
    whose owner is this process, a CLI process it started, or one of those
    leftover processes. Waits up to ``wait_s`` for both to go.
    """
    me = psutil.Process()
    deadline = time.monotonic() + wait_s
    while True:
        extra = [p for p in me.children(recursive=True) if p.pid not in before]
        for p in extra:
            if not _running(p) and p.pid not in STARTED[since:]:
                with contextlib.suppress(ChildProcessError, OSError):
                    os.waitpid(p.pid, os.WNOHANG)       # an orphan that exited after its parent: reap it
        owners = {os.getpid(), *STARTED[since:], *(p.pid for p in extra)}
        segs = segments_owned_by(*owners)
        running = [p for p in extra if _running(p)]
        if (not running and not segs) or time.monotonic() > deadline:
            return running, segs
        time.sleep(0.05)


def _running(p) -> bool:
    try:
        return p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def clean_leftovers(extra, segs) -> list[str]:
    """SIGKILL (by pid) and reap leftover processes, unlink leftover segments; what there was."""
    described = []
    for p in extra:
        with contextlib.suppress(psutil.Error):
            described.append(f"{p.pid} {p.status()} {' '.join(p.cmdline())[:80]}")
    kill_pids(p.pid for p in extra)
    for p in extra:
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(p.pid, 0)
    unlink_segments(segs)
    return described


@pytest.fixture
def no_leftovers():
    """Fail the test if it leaves a process or a segment behind: its own, or a CLI's it started.

    The CLI commands run as child processes (``testbed_cli`` tracks their pids);
    their segments carry the CLI's pid, and vCPUs a CLI failed to reap are
    reparented to this process, a subreaper for the test's duration. Anything
    left is cleaned up (SIGKILL by pid, unlink) before failing, so that one
    broken test does not break the next. ``test_cli.py`` shows it failing on a
    CLI-like child that leaves a segment and an orphan.
    """
    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}
    since = len(STARTED)
    reaper = set_subreaper(True)
    try:
        yield
        extra, segs = leftovers(before, since)
    finally:
        if reaper:
            set_subreaper(False)
    if extra or segs:
        described = clean_leftovers(extra, segs)
        pytest.fail(f"left behind: processes {described}, segments {sorted(segs)}")


@pytest.fixture(scope="session")
def warm_kernels():
    """Compile (or load from the disk cache) the operation loop once per test process.

    ``harness.run`` would do it too, but a cold compile (~10 s) must not count
    against the timing of a test that measures how fast a failure is reported.
    """
    from testbed import config, harness

    cfg = config.validate(config.RunConfig(variant="directmap", vcpus=2, frames=64, duration=0.5, warmup=0))
    with heavy_lock():            # a compile takes a whole CPU: not while another test measures
        t0 = time.perf_counter()
        harness.compile_kernels(cfg, config.params(cfg))
        return time.perf_counter() - t0
