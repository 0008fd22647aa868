"""The errors every module shares: the base class, and the one training's modules all raise.

One base class, so the CLI turns every expected failure into a one-line message.
"""


class PtblmError(RuntimeError):
    """A failure the user can fix; str(error) says what is wrong and how to fix it."""


class TrainingError(PtblmError):
    """Training cannot go on (divergence, a checkpoint that does not fit)."""
