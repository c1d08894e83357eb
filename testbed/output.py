"""Where results and text go: output paths checked before anything starts, results never lost
after a run, a closed pipe ended quietly, and lines that fit a 100-column terminal.

Exit status 3 (``EXIT_OUTPUT``) means the run itself finished but an output could not
be written: the result was saved to a fallback file, whose name is printed.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import sys
import tempfile
import textwrap
import time

from .errors import UsageError

EXIT_OUTPUT = 3
WIDTH = 100           # the testbed's own choice: a terminal of 100 columns; --wide lifts it (``width_for``)


# --- output paths ----------------------------------------------------------------------


def check_file(path: str, option: str) -> None:
    """Refuse, before anything starts, an output file that could not be written: a directory, a
    missing or unwritable folder, a read-only or full file system (probed by creating a file)."""
    full = os.path.abspath(path)
    folder = os.path.dirname(full)
    if os.path.isdir(full):
        example = {"--json": "out.json", "--csv": "out.csv", "--plot": "out.png"}.get(option, "out")
        raise UsageError(f"{option} {path}: is a folder; name a file in it, e.g. {os.path.join(path, example)}")
    if not os.path.isdir(folder):
        raise UsageError(f"{option} {path}: folder {folder} does not exist; create it or write elsewhere")
    if os.path.exists(full):
        try:
            with open(full, "a"):
                pass
        except OSError as e:
            raise UsageError(f"{option} {path}: cannot be written ({e.strerror}); write elsewhere") from None
    _probe(folder, f"{option} {path}")


def check_folder(path: str, option: str) -> None:
    """Refuse an output folder that exists as a file or cannot take a new file (missing folders are made later)."""
    full = os.path.abspath(path)
    if os.path.exists(full) and not os.path.isdir(full):
        raise UsageError(f"{option} {path}: is a file, not a folder; name a folder")
    existing = full
    while not os.path.isdir(existing):
        existing = os.path.dirname(existing)
    _probe(existing, f"{option} {path}")


def _probe(folder: str, what: str) -> None:
    try:
        fd, name = tempfile.mkstemp(prefix=".testbed-probe-", dir=folder)
    except OSError as e:
        raise UsageError(f"{what}: folder {folder} cannot take a new file ({e.strerror}); write elsewhere") from None
    try:
        os.write(fd, b"\0" * 4096)          # a full file system fails here (the file is still empty)
        os.fsync(fd)
    except OSError as e:
        raise UsageError(f"{what}: folder {folder} cannot take data ({e.strerror}); free space or write "
                         "elsewhere") from None
    finally:
        os.close(fd)
        os.unlink(name)


# --- writing after a run ---------------------------------------------------------------


class OutputFailed(Exception):
    """An output could not be written after the run; ``fallback`` holds the result instead."""

    def __init__(self, message: str, fallback: str | None):
        super().__init__(message)
        self.fallback = fallback


def fallback_path(kind: str) -> str:
    """Where a result goes when its own path failed: the current folder, else the temporary one."""
    name = f"testbed-{kind}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.json"
    for folder in (os.getcwd(), tempfile.gettempdir()):
        if os.access(folder, os.W_OK):
            return os.path.join(folder, name)
    return os.path.join(tempfile.gettempdir(), name)


def save_fallback(res: dict) -> str | None:
    """Write ``res`` as JSON to a fallback file; its path, or None if even that failed."""
    from . import results

    kind = str(res.get("kind", "result")).removeprefix("testbed.")
    for path in (fallback_path(kind), os.path.join(tempfile.gettempdir(), os.path.basename(fallback_path(kind)))):
        try:
            results.write_json(res, path)
            return path
        except OSError:
            continue
    return None


# --- the terminal ----------------------------------------------------------------------


class Terminal(io.TextIOBase):
    """stdout as the commands use it: lines longer than ``width`` wrap at spaces with a
    two-space indent (None: never), and a reader that went away (``| head``) ends the
    output quietly, as pyperf's ``catch_broken_pipe_error`` does, while the run goes on
    and still writes its files."""

    def __init__(self, stream, width: int | None = WIDTH):
        self.stream, self.width, self.closed_pipe, self._line = stream, width, False, ""
        self.wide = False
        self.held: list[str] | None = None      # verdict lines kept back (hold_verdict)

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        try:
            return self.stream.isatty()
        except (ValueError, OSError):         # closed underneath (a test's capture, a reader gone)
            return False

    def fileno(self) -> int:
        return self.stream.fileno()

    def write(self, text: str) -> int:
        if self.closed_pipe:
            return len(text)
        if self.width is None and self.held is None:
            self._emit(text)
            return len(text)
        self._line += text
        *done, self._line = self._line.split("\n")
        if self.held is not None:
            self.held += [line for line in done if line.startswith("verdict: ")]
            done = [line for line in done if not line.startswith("verdict: ")]
        if done:
            self._emit("".join(wrap(line, self.width) + "\n" for line in done))
        return len(text)

    def flush(self) -> None:
        if self._line and self.width is None and self.held is None:
            self._emit(self._line)
            self._line = ""
        if not self.closed_pipe:
            try:
                self.stream.flush()
            except (BrokenPipeError, OSError) as e:
                self._closed(e)

    def finish(self) -> None:
        """Write what is left of an unfinished line and flush."""
        if self._line:
            rest, self._line = self._line, ""
            self._emit(wrap(rest, self.width) if self.width else rest)
        self.flush()

    def _emit(self, text: str) -> None:
        try:
            self.stream.write(text)
        except (BrokenPipeError, OSError) as e:
            self._closed(e)

    def _closed(self, e: OSError) -> None:
        if isinstance(e, BrokenPipeError) or e.errno == errno.EPIPE:
            self.closed_pipe = True
            # further writes and the interpreter's last flush go nowhere, without a traceback
            devnull = os.open(os.devnull, os.O_WRONLY)
            try:
                os.dup2(devnull, self.stream.fileno())
            except (OSError, ValueError):
                pass
            finally:
                os.close(devnull)
            return
        raise e


@contextlib.contextmanager
def hold_verdict():
    """Inside, the command's ``verdict:`` lines are kept back from stdout and collected in the list
    this yields, every other line passing as it comes: ``rerun`` prints what differs first and the
    verdict last, so that the last line stays the verdict."""
    saved = sys.stdout
    term = saved if isinstance(saved, Terminal) else Terminal(saved, None)
    sys.stdout, term.held = term, []
    try:
        yield term.held
    finally:
        term.held = None
        if term is saved:
            term.flush()
        else:
            term.finish()                 # a Terminal of its own: its unfinished line too
        sys.stdout = saved


def wrap(line: str, width: int | None) -> str:
    """One logical line, wrapped at spaces to ``width`` columns, continuation lines indented two spaces."""
    if width is None or len(line) <= width:
        return line
    lead = line[:len(line) - len(line.lstrip())]
    return "\n".join(textwrap.wrap(line, width, initial_indent="", subsequent_indent=lead + "  ",
                                   break_long_words=False, break_on_hyphens=False)) or line


def width_for(stream, wide: bool) -> int | None:
    """The width to wrap at: 100 columns on a terminal, COLUMNS when the environment sets it (a
    test, a pager), none with --wide or into a pipe or file, where whole lines serve grep and
    tools best. The tables fit 100 columns whatever this says; --wide widens them."""
    if wide:
        return None
    try:
        columns = int(os.environ.get("COLUMNS", ""))
    except ValueError:
        columns = 0
    if columns > 0:
        return columns
    try:
        return WIDTH if stream.isatty() else None
    except (ValueError, OSError):
        return None


def install(width: int | None, wide: bool = False) -> Terminal:
    """Put a Terminal in front of the real stdout for the rest of the command; ``wide``: --wide, the
    tables show every column."""
    term = sys.stdout if isinstance(sys.stdout, Terminal) else Terminal(sys.stdout, width)
    term.width, term.wide = width, wide
    sys.stdout = term
    return term


def uninstall() -> None:
    if isinstance(sys.stdout, Terminal):
        term = sys.stdout
        term.finish()
        sys.stdout = term.stream
