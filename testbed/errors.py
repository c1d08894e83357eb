"""Exceptions at the boundaries: usage errors exit 2, run failures exit 1, a signal 128 + its number."""

import signal


class UsageError(Exception):
    """Bad input: one line naming the problem and the fix; nothing has been started."""


class ResultsError(Exception):
    """A results file that cannot be read or compared."""


def signal_exit(signame: str) -> int:
    """The exit status of a command stopped by a signal: 128 + its number (130 for SIGINT, 143 for SIGTERM)."""
    return 128 + signal.Signals[signame].value
