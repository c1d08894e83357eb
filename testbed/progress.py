"""Progress on long commands: a rich progress bar on a terminal, nothing otherwise.

rich is a well-kept library that handles terminal widths, redraws and
non-terminals; hand-written escape codes would not.
"""

from __future__ import annotations

import contextlib
import sys


class _Quiet:
    def advance(self, description: str = "") -> None:
        pass

    def note(self, text: str) -> None:
        pass


class _Bar:
    def __init__(self, progress, task):
        self.progress, self.task = progress, task

    def advance(self, description: str = "") -> None:
        self.progress.update(self.task, advance=1, description=description or None)

    def note(self, text: str) -> None:
        self.progress.update(self.task, description=text)


@contextlib.contextmanager
def progress(total: int, title: str, enabled: bool | None = None):
    """Yield an object with ``advance(description)`` and ``note(text)``."""
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        yield _Quiet()
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=Console(file=sys.stderr), transient=True) as p:
        yield _Bar(p, p.add_task(title, total=total))
