"""ptb-lm: the Zaremba et al. (2014) PTB LSTM language models as a reproducible pipeline.

`ptblm.load_model(path_or_uri)` gives a trained model and its vocabulary (see ptblm.api).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["load_model"]

if TYPE_CHECKING:
    from .api import load_model


def __getattr__(name: str) -> Any:
    """`load_model` imports torch: only when asked for, so `ptblm --help` stays fast."""
    if name == "load_model":
        from .api import load_model

        return load_model
    raise AttributeError(f"module 'ptblm' has no attribute {name!r}")
