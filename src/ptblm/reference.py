"""The training update in plain PyTorch: the definition the fast step must equal.

This is the tutorial's update as pytorch/examples' `main.py` writes it: logits, cross
entropy, clip, step. `step.TrainStep` computes the same update faster (the fused softmax
loss of model.py, clipping folded into fused SGD, CUDA graphs); tests pin its cost and
every parameter after a step to this function's. Read this one first.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .model import State, detach


def reference_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    state: State,
    max_grad_norm: float,
) -> tuple[torch.Tensor, State]:
    """One truncated-BPTT update of `model` (any module whose forward(x, state) gives
    [batch, steps, vocab] logits and the next state) on the window (x, y).

    TF's cost is the sum over the window's steps of the batch-mean cross entropy, i.e. the
    mean times num_steps; its gradient is clipped to `max_grad_norm` by global norm, then
    plain SGD (p -= lr * g) applies it. Returns the cost and the detached next state.
    """
    logits, state = model(x, state)
    cost = F.cross_entropy(logits.flatten(0, 1), y.flatten()) * x.size(1)
    optimizer.zero_grad()
    cost.backward()
    nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    return cost.detach(), detach(state)
