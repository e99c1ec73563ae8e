"""The one exception type users see: a clear message, no traceback."""


class FinetuneError(Exception):
    """Bad input or configuration: the message says what was wrong, where, and how to fix it."""
