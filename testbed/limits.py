"""What the host can hold: checked before a run forks anything.

Hundreds of vCPUs are hundreds of processes, each with its own private pages
and a few file descriptors in the parent. A run that cannot fit is refused
with the limit named, before any process or segment exists.
"""

from __future__ import annotations

import os
import resource

from .errors import UsageError

# Unique memory of one vCPU process once it runs (private pages after fork:
# its TLB, stacks, the interpreter's pages it writes). Measured at 256 vCPUs on
# a 2-core host: a median of about 9 MiB (see the README); this leaves headroom.
VCPU_MIB = 16
FDS_PER_VCPU = 2        # the parent holds each child's sentinel, and a little more
FDS_SPARE = 64


def _meminfo_kib(key: str) -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def _read_int(path: str) -> int | None:
    try:
        with open(path) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _count_tasks() -> int:
    """Threads on the host now (each is a task for pid_max and threads-max)."""
    n = 0
    try:
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    n += len(os.listdir(f"/proc/{d}/task"))
                except OSError:
                    pass
    except OSError:
        pass
    return n


def _user_processes() -> int:
    uid = os.getuid()
    n = 0
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                if os.stat(f"/proc/{d}").st_uid == uid:
                    n += 1
            except OSError:
                pass
    return n


def available_bytes() -> int | None:
    """Memory available for new allocations now (MemAvailable), in bytes; None if unknown."""
    kib = _meminfo_kib("MemAvailable")
    return None if kib is None else kib * 1024


def check_capacity(vcpus: int, arena_bytes: int) -> None:
    """Raise UsageError if ``vcpus`` processes and the arena cannot fit on this host."""
    # file descriptors in the parent: raise the soft limit to the hard one if that is enough
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need_fds = vcpus * FDS_PER_VCPU + FDS_SPARE
    if soft != resource.RLIM_INFINITY and need_fds > soft:
        if hard == resource.RLIM_INFINITY or need_fds <= hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (need_fds, hard))
        else:
            raise UsageError(f"--vcpus {vcpus} needs about {need_fds} open files, but the limit is {hard} "
                             f"(ulimit -n); raise it or lower --vcpus")
    # processes of this user
    soft, _ = resource.getrlimit(resource.RLIMIT_NPROC)
    if soft != resource.RLIM_INFINITY and os.getuid() != 0:
        have = _user_processes()
        if have + vcpus > soft:
            raise UsageError(f"--vcpus {vcpus} needs {vcpus} more processes, but this user runs {have} of at most "
                             f"{soft} (ulimit -u); raise it or lower --vcpus")
    # tasks on the host
    tasks = None
    for path, what in (("/proc/sys/kernel/pid_max", "kernel.pid_max"), ("/proc/sys/kernel/threads-max",
                                                                      "kernel.threads-max")):
        limit = _read_int(path)
        if limit is not None and vcpus > limit // 2:
            tasks = _count_tasks() if tasks is None else tasks
            if tasks + vcpus > limit:
                raise UsageError(f"--vcpus {vcpus} needs {vcpus} more processes, but {tasks} tasks already run "
                                 f"and {what} is {limit}; lower --vcpus")
    # memory
    avail = _meminfo_kib("MemAvailable")
    if avail is not None:
        need = vcpus * VCPU_MIB * 1024 + arena_bytes // 1024
        if need > avail:
            raise UsageError(f"--vcpus {vcpus} needs about {need // 1024} MiB ({VCPU_MIB} MiB per vCPU process and "
                             f"{arena_bytes >> 20} MiB of shared arena), but only {avail // 1024} MiB are available; "
                             f"lower --vcpus or --frames")
