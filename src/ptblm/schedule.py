"""The learning-rate schedule: each epoch's rate, from the config and the epochs before it.

A policy over epochs, not part of a step: the loop hands each epoch's rate to
`step.TrainStep.set_lr`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from .config import ModelConfig


def learning_rate(config: ModelConfig, epoch: int, history: Sequence[dict] = ()) -> float:
    """The learning rate of `epoch` (1-based), given the records of the epochs before it.

    lr_schedule epoch (the tutorial's): learning_rate * lr_decay ** max(epoch - max_epoch, 0).
    lr_schedule plateau (pytorch/examples word_language_model): multiplied by lr_decay after
    every epoch from max_epoch on whose validation perplexity is no better than the best
    before it. A function of the history alone, so a resumed run gets the same rates.
    """
    if config.lr_schedule == "epoch":
        return config.learning_rate * config.lr_decay ** max(epoch - config.max_epoch, 0)
    lr, best = config.learning_rate, math.inf
    for record in history[: epoch - 1]:
        if record["epoch"] >= config.max_epoch and record["valid_perplexity"] >= best:
            lr *= config.lr_decay
        best = min(best, record["valid_perplexity"])
    return lr
