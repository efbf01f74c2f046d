"""The one exception type users see: its message is printed as a single line."""


class ReglError(Exception):
    """Bad input or a missing resource; the CLI prints the message and exits with 2."""
