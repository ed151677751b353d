"""The one exception type users see as a clear one-line error (the CLI prints it, no traceback)."""


class DCPError(Exception):
    """A problem with the user's input (model, file, argument), explained in one line."""
