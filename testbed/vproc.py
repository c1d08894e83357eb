"""vCPU processes: a bare ``os.fork`` and a pidfd per child.

The parent is a large process (the compiled kernels, numpy, the interpreter);
every fork copies its page tables, and every line of Python a child runs
before it settles dirties pages that fork shared. ``multiprocess.Process``
runs its own bootstrap in each child and keeps a registry that it scans on
every start; for hundreds of vCPUs that cost grows with each one started. A
``VcpuProcess`` forks, and the child goes straight to its target and leaves
with ``os._exit`` (no interpreter teardown, no finalisers of the parent's).

The parent watches a child through a pidfd (readable once the child has
exited), so waiting for any of hundreds of vCPUs to end is one blocking
``select``-style call, never a poll of each.
"""

from __future__ import annotations

import os
import select
import sys
import time
import traceback


class VcpuProcess:
    """The subset of ``multiprocessing.Process`` the harness uses, for a forked child."""

    def __init__(self, target, args=(), name: str = ""):
        self.target, self.args, self.name = target, args, name
        self.pid: int | None = None
        self.sentinel: int | None = None
        self._exitcode: int | None = None

    def start(self) -> None:
        pid = os.fork()
        if pid == 0:                          # the child
            code = 1
            try:
                self.target(*self.args)
                code = 0
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 1
            except BaseException:
                traceback.print_exc()
                sys.stderr.flush()
            finally:
                os._exit(code)
        self.pid = pid
        self.sentinel = os.pidfd_open(pid)

    # --- what the parent asks ------------------------------------------------------
    @property
    def exitcode(self) -> int | None:
        """None while running; the exit status, or -signal if a signal ended it."""
        if self._exitcode is None and self.pid is not None:
            self._reap(os.WNOHANG)
        return self._exitcode

    def is_alive(self) -> bool:
        return self.exitcode is None

    def join(self, timeout: float | None = None) -> None:
        if self.pid is None or self._exitcode is not None:
            return
        if timeout is None:
            self._reap(0)
            return
        poller = select.poll()
        poller.register(self.sentinel, select.POLLIN)
        if poller.poll(max(0.0, timeout) * 1000):
            self._reap(0)

    def _reap(self, flags: int) -> None:
        try:
            pid, status = os.waitpid(self.pid, flags)
        except ChildProcessError:         # reaped elsewhere: it has exited, status unknown
            self._set(0)
            return
        if pid == 0:
            return
        self._set(-os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status))

    def _set(self, code: int) -> None:
        self._exitcode = code
        if self.sentinel is not None:
            os.close(self.sentinel)
            self.sentinel = None


def wait_any(procs, timeout: float, fds=()) -> tuple[list, list]:
    """Block until one of ``procs`` exits, one of ``fds`` is readable, or ``timeout`` passes.

    Returns (the processes that exited, the fds that are readable).
    """
    by_fd = {p.sentinel: p for p in procs if p.sentinel is not None}
    if not by_fd and not fds:
        time.sleep(max(0.0, timeout))
        return [], []
    poller = select.poll()
    for fd in (*by_fd, *fds):
        poller.register(fd, select.POLLIN)
    exited, readable = [], []
    for fd, _ in poller.poll(max(0.0, timeout) * 1000):
        if fd in by_fd:
            by_fd[fd].join(0)
            exited.append(by_fd[fd])
        else:
            readable.append(fd)
    return exited, readable
