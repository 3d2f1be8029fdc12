"""The one exception type that reaches users as a single `error: ...` line."""


class VcraftError(Exception):
    """A problem the user can fix (bad input, missing or mismatched file). The message says what to do."""
