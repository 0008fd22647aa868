"""The plain PyTorch loop, as most people write it: the yardstick ptblm is measured against.

Its model is `PlainModel` (nn.Linear's layout, autograd's cross entropy); its update is the
library's `ptblm.reference.reference_step`, the definition ours must equal. The benchmark
times it beside ours; benchmarks/plain_run.py trains it through a whole run.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ptblm.model import PTBModel


class PlainModel(nn.Module):
    """The model as most people write it (pytorch/examples style): the same function as
    ours, with nn.Linear's [vocab, hidden] softmax weight and autograd's cross entropy."""

    def __init__(self, ours: PTBModel):
        super().__init__()
        config = ours.config
        self.embedding = nn.Embedding(config.vocab_size, config.hidden_size)
        self.dropout = nn.Dropout(1.0 - config.keep_prob)
        self.lstm = nn.LSTM(
            config.hidden_size,
            config.hidden_size,
            config.num_layers,
            dropout=ours.lstm.dropout,
            batch_first=True,
        )
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size)
        with torch.no_grad():  # ours' initial weights, so both start at the same point
            self.embedding.weight.copy_(ours.embedding.weight)
            self.lstm.load_state_dict(ours.lstm.state_dict())
            self.decoder.weight.copy_(ours.softmax.weight.t())
            self.decoder.bias.copy_(ours.softmax.bias)
        self.to(ours.embedding.weight.device)

    def forward(self, x: torch.Tensor, state):
        hidden, state = self.lstm(self.dropout(self.embedding(x)), state)
        return self.decoder(self.dropout(hidden)), state

    def copy_into(self, ours: PTBModel) -> PTBModel:
        """These weights in ours' layout, so ptblm's own evaluation can score them."""
        with torch.no_grad():
            ours.embedding.weight.copy_(self.embedding.weight)
            ours.lstm.load_state_dict(self.lstm.state_dict())
            ours.softmax.weight.copy_(self.decoder.weight.t())
            ours.softmax.bias.copy_(self.decoder.bias)
        return ours


def plain_evaluate(ours: PTBModel, ids: torch.Tensor, device: torch.device) -> float:
    """The tutorial's test loop as usually written: batch 1, num_steps 1, .item() per word."""
    model = PlainModel(ours).eval()
    data = ids.to(device)[None]
    state = ours.zero_state(1, device)
    total = 0.0
    with torch.no_grad():
        for i in range(data.size(1) - 1):
            logits, state = model(data[:, i : i + 1], state)
            total += F.cross_entropy(logits[0], data[0, i + 1 : i + 2]).item()
    return math.exp(total / (data.size(1) - 1))
