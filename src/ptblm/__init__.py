"""ptb-lm: the Zaremba et al. (2014) PTB LSTM language models as a reproducible pipeline."""

__version__ = "0.1.0"
