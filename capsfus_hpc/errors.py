"""The one exception type a user sees: its message says what to do."""


class CapsfusError(Exception):
    """A problem the user can act on; the CLI prints it as one red line and exits 1."""
