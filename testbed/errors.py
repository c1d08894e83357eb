"""Exceptions at the boundaries: usage errors exit 2, run failures exit 1."""


class UsageError(Exception):
    """Bad input: one line naming the problem and the fix; nothing has been started."""


class ResultsError(Exception):
    """A results file that cannot be read or compared."""
