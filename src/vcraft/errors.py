"""The exception types that reach users as a single `error: ...` line."""


class VcraftError(Exception):
    """A problem the user can fix (bad input, missing or mismatched file). The message says what to do."""


class RunFailure(RuntimeError):
    """A failure at run time (a network or disk problem, a corrupt download) whose message says it all."""


def one_line(exc: BaseException) -> str:
    """An exception as the one line users see: the message of vcraft's own errors, else its type and first line."""
    text = str(exc).splitlines()[0] if str(exc) else ""
    return text if isinstance(exc, (VcraftError, RunFailure)) else f"{type(exc).__name__}: {text}"
