"""The one exception type for problems with what the user asked for."""


class UserError(Exception):
    """Bad input (arguments, files, budgets). The message names the problem and the fix.

    The CLI prints it as one line and exits with status 2; library callers can catch it.
    """
