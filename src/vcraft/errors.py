"""The exception types that reach users as a single `error: ...` line."""


class VcraftError(Exception):
    """A problem the user can fix (bad input, missing or mismatched file). The message says what to do."""


class RunFailure(RuntimeError):
    """A failure at run time (a network or disk problem, a corrupt download) whose message says it all."""
