"""One base class, so the CLI turns every expected failure into a one-line message."""


class PtblmError(RuntimeError):
    """A failure the user can fix; str(error) says what is wrong and how to fix it."""
