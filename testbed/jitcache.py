"""The operation loops a command will run, compiled before its first run, on every allowed CPU.

A cold compile of one design's loop keeps a CPU busy for many seconds (numba's typing and
inlining, then LLVM). Left to the runs, a command that runs several designs (``compare``,
``scale``, ``timers``) would compile them one after the other, each inside its first run,
while the other CPUs idle and the progress bar sits still. So the plan step calls
``prepare`` with every run it will make: the loops those runs need are named (one per
design, the interrupt loop only for runs with ``--irq-rate``: ``loops.loop``), looked up
in numba's on-disk cache, and the missing ones are compiled in worker processes, one per
allowed CPU, which fill that cache; each run then loads its loop from disk. One line on
stderr says what is happening. A warm start looks up a few index files and starts no
process.

A worker that fails leaves its loop uncompiled: the run compiles it in process and raises
what there is to raise, where it would have without this step.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import shutil
import signal
import sys
import time

from . import abi

WHY = "first run on this machine; cached afterwards"


def loop_key(p) -> tuple[int, bool]:
    """(variant id, with interrupts): which compiled loop a run of parameter array ``p`` runs."""
    return int(p[abi.P_VARIANT]), bool(p[abi.P_IRQ_INTERVAL] != 0)


def cached(dispatcher) -> bool:
    """Whether numba's disk cache holds machine code of ``dispatcher`` for this CPU (any signature:
    a loop has one). Reads the cache's index only; nothing is compiled or loaded."""
    impl = getattr(dispatcher, "_cache", None)
    index = getattr(impl, "_cache_file", None)
    if index is None:
        return False
    magic = dispatcher.targetctx.codegen().magic_tuple()
    return any(key[1] == magic for key in index._load_index())


def _plans(runs) -> list:
    """Run plans of ``runs`` (plans, or validated configs planned here)."""
    from . import runplan

    return [r if isinstance(r, runplan.RunPlan) else runplan.plan(r) for r in runs]


def needed(runs) -> list[tuple[str, tuple[int, bool], object]]:
    """(label, loop key, plan) of each loop that ``runs`` (run plans or validated configs) run, in the
    order first needed; the label as in "the locked loop" (a design's module name, "interrupt" added)."""
    out, seen = [], set()
    for plan in _plans(runs):
        key = loop_key(plan.params)
        if key not in seen:
            seen.add(key)
            module = plan.module.__name__.rsplit(".", 1)[-1].replace("_", "-")
            out.append((f"{module}{' interrupt' if key[1] else ''}", key, plan))
    return out


def missing(runs) -> list[tuple[str, object]]:
    """(label, plan) of each loop that ``runs`` need and the disk cache lacks (``needed``)."""
    from . import loops, tlb

    plans = _plans(runs)
    out = [(label, plan) for label, key, plan in needed(plans) if not cached(loops.loop_of(*key))]
    if out or cached(tlb.flush_all):
        return out
    return [("context-switch flush", plans[0])] if plans else []


def every_loop() -> list:
    """A validated run config for each loop of the registry: every design's, with and without
    interrupts (what the test suite compiles before its workers start)."""
    from . import config as cfgmod
    from . import irq
    from . import variants as registry

    out = []
    for v in registry.REAL:
        base = cfgmod.RunConfig(variant=v.name, vcpus=1, frames=64, duration=0.5, warmup=0.0)
        out.append(cfgmod.validate(base))
        out.append(cfgmod.validate(dataclasses.replace(
            base, irq_rate=1000.0, entries=v.module.DEFAULT_ENTRIES + irq.HANDLER_MAPS)))
    return out


def _weight(plan) -> int:
    """The source size of the design's module: the larger, the longer its loop compiles (the
    testbed's own rule, to start the longest compiles first)."""
    try:
        return os.path.getsize(plan.module.__file__) + (1 << 20) * int(plan.cfg.irq_rate > 0)
    except OSError:
        return 0


def _compile_one(plan) -> None:
    from . import runplan

    runplan.compile_kernels(plan.cfg, plan.params.copy(), plan.module)


def _worker(jobs, tasks, results, parent_pid: int) -> None:
    """A compiling process: takes an index into ``jobs`` (callables) from ``tasks`` until None, says when
    each starts and ends. The jobs come with the fork (a plan holds its design's module, which does not pickle)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)        # Ctrl-C is the parent's: it kills us
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)    # PR_SET_PDEATHSIG
    if os.getppid() != parent_pid:
        os._exit(0)
    while True:
        task = tasks.get()
        if task is None:
            return
        i = task
        results.put(("start", i, ""))
        try:
            jobs[i]()
            results.put(("done", i, ""))
        except Exception as e:          # the run compiles it again in process and reports it there
            results.put(("failed", i, f"{type(e).__name__}: {e}"))


class _Line:
    """One line on stderr: rewritten in place on a terminal, written once otherwise."""

    def __init__(self, stream):
        self.stream = stream
        self.tty = stream.isatty()
        self.said = False

    def say(self, *texts: str) -> None:
        """The first of ``texts`` that fits the terminal (each shorter than the one before)."""
        text = texts[0]
        if self.tty:
            # A line wider than the terminal wraps, and erasing the line erases only its last
            # part: the rest would stay on the screen. So it is shortened to fit.
            width = shutil.get_terminal_size().columns - 1
            text = next((t for t in texts if len(t) <= width), texts[-1])[:width]
            self.stream.write("\r\x1b[2K" + text)
            self.stream.flush()
        elif not self.said:
            self.stream.write(text + "\n")
            self.stream.flush()
        self.said = True

    def close(self) -> None:
        if self.tty and self.said:
            self.stream.write("\r\x1b[2K")
            self.stream.flush()


def _names(labels) -> str:
    labels = list(labels)
    if len(labels) == 1:
        return f"the {labels[0]} loop"
    return "the " + ", ".join(labels[:-1]) + f" and {labels[-1]} loops"


def prepare(cfgs, stream=None, processes: int | None = None, extra=()) -> float:
    """Compile the loops ``cfgs`` (run plans or validated configs) will run and the cache lacks, in
    parallel; the seconds it took.

    ``processes``: how many at once (default: the CPUs this process may use, at most one per loop).
    ``extra``: more to compile among them, as (label, weight, callable, dispatcher): the callable
    compiles, the dispatcher says whether the cache holds it already, the weight orders it among the
    loops (``_weight``: the larger, the sooner); the test suite's standalone kernels.
    """
    cfgs = list(cfgs)
    todo = [(label, _weight(plan), functools.partial(_compile_one, plan)) for label, plan in missing(cfgs)]
    todo += [(label, weight, fn) for label, weight, fn, dispatcher in extra if not cached(dispatcher)]
    if not todo:
        return 0.0
    t0 = time.perf_counter()
    stream = stream or sys.stderr
    todo.sort(key=lambda t: -t[1])
    n = min(len(todo), processes or len(os.sched_getaffinity(0)))
    line = _Line(stream)
    labels = [label for label, _, _ in todo]
    if n <= 1:
        try:
            for i, (label, _, job) in enumerate(todo):
                if line.tty:
                    line.say(f"compiling {_names([label])} ({WHY}) {i + 1}/{len(todo)}",
                             f"compiling {_names([label])} {i + 1}/{len(todo)}")
                else:
                    line.say(f"compiling {_names(labels)} ({WHY})")
                job()
        finally:
            line.close()
        return time.perf_counter() - t0
    import multiprocess as mp

    ctx = mp.get_context("fork")
    tasks, results = ctx.SimpleQueue(), ctx.SimpleQueue()
    procs = [ctx.Process(target=_worker, args=([job for _, _, job in todo], tasks, results, os.getpid()), name=f"testbed-compile{k}", daemon=True)
             for k in range(n)]
    for i in range(len(todo)):
        tasks.put(i)
    for _ in procs:
        tasks.put(None)
    running, finished = [], 0
    try:
        for proc in procs:
            proc.start()
        line.say(f"compiling {_names(labels)} ({WHY}) in {n} processes" if not line.tty
                 else f"compiling {_names(labels[:1])} ({WHY}) 1/{len(todo)}")
        while finished < len(todo):
            if results.empty():
                if not any(p.is_alive() for p in procs):
                    break                   # a worker died: the runs compile what is left
                time.sleep(0.05)
                continue
            what, i, _ = results.get()
            if what == "start":
                running.append(i)
            else:
                finished += 1
                with contextlib.suppress(ValueError):
                    running.remove(i)
            if running:
                count = f"{min(finished + 1, len(todo))}/{len(todo)}"
                line.say(f"compiling {_names(labels[j] for j in running)} ({WHY}) {count}",
                         f"compiling {_names(labels[j] for j in running[:1])} ({WHY}) {count}",
                         f"compiling {_names(labels[j] for j in running[:1])} {count}")
        for proc in procs:
            proc.join()
    finally:
        for proc in procs:
            if proc.is_alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
            proc.join()
        line.close()
    return time.perf_counter() - t0
