"""Errors shown to the user as one line (the CLI prints them without a traceback)."""


class UserError(Exception):
    """Bad input or environment the user can fix: printed as `error: <message>`, exit code 2."""
