"""One ``multiprocessing.shared_memory`` segment per run.

The parent creates the segment and alone owns its removal: it unlinks it on
every exit path (return, exception, a worker's death, SIGTERM, Ctrl-C). Workers
attach by name and only close their mapping. multiprocessing's resource tracker
is kept out of it: on Python < 3.13 it registers every attach as if it were a
creation and then warns about, or unlinks a second time, segments that the
owner already removed. A parent killed with SIGKILL cannot clean up; its
segment's name carries its pid, so ``stale_segments`` finds it once that pid is
gone and ``remove_stale`` reclaims it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import sys
from multiprocessing import resource_tracker, shared_memory

import numpy as np

from .layout import Layout

PREFIX = "testbed"
SHM_DIR = "/dev/shm"


@contextlib.contextmanager
def _untracked():
    """Keep multiprocessing's resource tracker from hearing about our segments."""
    if sys.version_info >= (3, 13):
        yield
        return
    saved = resource_tracker.register, resource_tracker.unregister
    resource_tracker.register = resource_tracker.unregister = lambda *a, **k: None
    try:
        yield
    finally:
        resource_tracker.register, resource_tracker.unregister = saved


def _open(name: str, create: bool, size: int = 0) -> shared_memory.SharedMemory:
    kwargs = {"track": False} if sys.version_info >= (3, 13) else {}
    with _untracked():
        return shared_memory.SharedMemory(name=name, create=create, size=size, **kwargs)


def segment_name(owner_pid: int | None = None) -> str:
    return f"{PREFIX}_{owner_pid or os.getpid()}_{secrets.token_hex(4)}"


def owner_of(name: str) -> int | None:
    parts = name.split("_")
    if len(parts) != 3 or parts[0] != PREFIX or not parts[1].isdigit():
        return None
    return int(parts[1])


class Arena:
    """A shared segment laid out by a ``Layout``; ``views`` maps names to numpy arrays."""

    def __init__(self, shm: shared_memory.SharedMemory, layout: Layout, owner: bool):
        self.shm = shm
        self.layout = layout
        self.owner = owner
        self.name = shm.name
        self.views: dict[str, np.ndarray] = layout.views(shm.buf)

    @classmethod
    def create(cls, layout: Layout) -> "Arena":
        shm = _open(segment_name(), create=True, size=layout.size)
        arena = cls(shm, layout, owner=True)
        return arena

    @classmethod
    def attach(cls, name: str, layout: Layout) -> "Arena":
        return cls(_open(name, create=False), layout, owner=False)

    def __getitem__(self, key: str) -> np.ndarray:
        return self.views[key]

    def close(self) -> None:
        """Drop our mapping. Views must not be used afterwards."""
        self.views = {}
        if self.shm is not None:
            with contextlib.suppress(BufferError):
                self.shm.close()

    def unlink(self) -> None:
        """Remove the segment from the system (owner only; idempotent)."""
        if not self.owner:
            return
        with _untracked(), contextlib.suppress(FileNotFoundError):
            self.shm.unlink()
        self.owner = False

    def destroy(self) -> None:
        self.close()
        self.unlink()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.destroy()


def list_segments() -> list[str]:
    try:
        return sorted(n for n in os.listdir(SHM_DIR) if n.startswith(PREFIX + "_"))
    except FileNotFoundError:
        return []


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stale_segments() -> list[str]:
    """Testbed segments whose owning process is gone."""
    out = []
    for name in list_segments():
        pid = owner_of(name)
        if pid is not None and not _alive(pid):
            out.append(name)
    return out


def remove_stale() -> list[str]:
    removed = []
    for name in stale_segments():
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(SHM_DIR, name))
            removed.append(name)
    return removed
