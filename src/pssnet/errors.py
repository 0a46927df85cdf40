"""The one exception type for problems with what the user asked for."""


def exception_line(exc: BaseException, limit: int = 120) -> str:
    """``Type: first line of the message`` (cut at ``limit`` characters), for one-line errors
    that name what a library raised."""
    text = str(exc)
    return f"{type(exc).__name__}: {text.splitlines()[0][:limit] if text else ''}"


class UserError(Exception):
    """Bad input (arguments, files, budgets). The message names the problem and the fix.

    The CLI prints it as one line and exits with status 2; library callers can catch it.
    """
