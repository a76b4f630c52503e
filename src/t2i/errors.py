"""User-facing errors: the CLI prints their message and exits 2, without a traceback."""


class T2IError(Exception):
    """A problem with the user's input (path, file, option); the message names the value and the fix."""
