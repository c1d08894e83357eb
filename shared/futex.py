"""Blocking waits on words of the shared arena: Linux futexes.

The harness's own waits (the start barrier, a stutter pause, a vCPU that the
scheduler has descheduled) must cost no CPU however many vCPUs wait, so a
waiter sleeps in the kernel on a word of the arena instead of polling it.

The pattern, free of lost wake-ups: a waiter reads a *sequence word*, then
checks the condition it waits for, and sleeps only while the sequence word
still holds what it read (``wait``: the kernel compares and sleeps
atomically). A waker first changes the condition, then bumps the sequence
word, then wakes the sleepers (``bump_and_wake``).

Futexes are 32-bit; the arena's words are int64 and only their low half (the
first four bytes, on little-endian hosts) is watched, which holds every value
a sequence word takes between two wake-ups.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import struct
import sys

import numpy as np

FUTEX_WAIT = 0
FUTEX_WAKE = 1
WAKE_ALL = 0x7FFFFFFF
_SYS_FUTEX = {"x86_64": 202, "aarch64": 98, "ppc64le": 221, "s390x": 238, "riscv64": 98}

_libc = ctypes.CDLL(None, use_errno=True)          # the C library the interpreter is linked with
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long
_NR = _SYS_FUTEX.get(platform.machine())


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def available() -> bool:
    return _NR is not None and sys.byteorder == "little" and sys.platform.startswith("linux")


def address(arr: np.ndarray, index: int) -> int:
    """The address of ``arr[index]`` (a 1-D view of int64 words)."""
    return arr.ctypes.data + index * arr.strides[0]


def wait(arr: np.ndarray, index: int, expected: int, timeout_s: float | None = None) -> bool:
    """Sleep while ``arr[index]`` (low 32 bits) equals ``expected``; False on time-out.

    Returns at once if the word already differs. A wake-up or a signal also
    returns: callers re-check their condition in a loop.
    """
    if _NR is None:
        raise OSError(errno.ENOSYS, f"futex wait is not supported on {platform.machine()}")
    ts = None
    if timeout_s is not None:
        sec = max(0.0, timeout_s)
        ts = ctypes.byref(_Timespec(int(sec), int((sec - int(sec)) * 1e9)))
    val = struct.unpack("<i", struct.pack("<I", int(expected) & 0xFFFFFFFF))[0]
    rc = _syscall(_NR, ctypes.c_void_p(address(arr, index)), FUTEX_WAIT, ctypes.c_int(val), ts, None, 0)
    if rc == -1:
        e = ctypes.get_errno()
        if e == errno.ETIMEDOUT:
            return False
        if e not in (errno.EAGAIN, errno.EINTR):
            raise OSError(e, os.strerror(e))
    return True


def wake(arr: np.ndarray, index: int, count: int = WAKE_ALL) -> int:
    """Wake up to ``count`` sleepers on ``arr[index]``; how many were woken."""
    if _NR is None:
        return 0
    rc = _syscall(_NR, ctypes.c_void_p(address(arr, index)), FUTEX_WAKE, ctypes.c_int(count), None, None, 0)
    return max(0, int(rc))


def bump_and_wake(arr: np.ndarray, index: int) -> None:
    """Announce a change of condition to every sleeper on the sequence word ``arr[index]``."""
    arr[index] = (int(arr[index]) + 1) & 0x7FFFFFFF
    wake(arr, index)
