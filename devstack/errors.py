"""The one exception type the CLI turns into a clear message and exit code 1."""


class DevstackError(Exception):
    """A failure the user can act on; its message is shown as is, without a traceback."""
