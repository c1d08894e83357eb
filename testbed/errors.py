"""Exceptions at the boundaries: usage errors exit 2, run failures exit 1, a signal 128 + its number."""

import signal


class UsageError(Exception):
    """Bad input: one line naming the problem and the fix; nothing has been started."""


class ResultsError(Exception):
    """A results file that cannot be read or compared."""


def signal_exit(signame: str) -> int:
    """The exit status of a command stopped by a signal: 128 + its number (130 for SIGINT, 143 for SIGTERM)."""
    return 128 + signal.Signals[signame].value


def did_you_mean(word: str, choices) -> str:
    """`` (did you mean 'locked'?)`` for a misspelt name close to one of ``choices``, else ``""``."""
    import difflib

    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""
