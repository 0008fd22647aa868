"""The Zaremba et al. (2014) LSTM language model (TF tutorial `PTBModel`), in PyTorch."""

from __future__ import annotations

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from .config import ModelConfig

State = tuple[torch.Tensor, torch.Tensor]  # (h, c), each [num_layers, batch, hidden]


class PTBModel(nn.Module):
    """Embedding -> dropout -> stacked LSTM (dropout after every layer) -> softmax layer.

    `nn.LSTM` computes the same function family as TF's BasicLSTMCell(forget_bias=0):
    two bias vectors instead of one and another gate order, both zero-initialised
    so the sum starts at TF's zeros. Dropout sits on the embedding output, between
    layers (nn.LSTM's `dropout`) and on the last layer's output; none is recurrent.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        drop = 1.0 - config.keep_prob
        self.embedding = nn.Embedding(config.vocab_size, config.hidden_size)
        self.dropout = nn.Dropout(drop)
        self.lstm = nn.LSTM(
            config.hidden_size,
            config.hidden_size,
            num_layers=config.num_layers,
            dropout=drop if config.num_layers > 1 else 0.0,
            batch_first=True,
        )
        self.softmax = nn.Linear(config.hidden_size, config.vocab_size)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Every weight uniform in [-init_scale, init_scale]; LSTM biases zero (as TF)."""
        scale = self.config.init_scale
        for name, param in self.named_parameters():
            if name.startswith("lstm.bias"):
                nn.init.zeros_(param)
            else:
                nn.init.uniform_(param, -scale, scale)

    def zero_state(self, batch_size: int, device: torch.device | str = "cpu") -> State:
        shape = (self.config.num_layers, batch_size, self.config.hidden_size)
        return torch.zeros(shape, device=device), torch.zeros(shape, device=device)

    def forward(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """Logits [batch, steps, vocab] for ids `x` [batch, steps], and the next state."""
        hidden, state = self.lstm(self.dropout(self.embedding(x)), state)
        return self.softmax(self.dropout(hidden)), state

    def cost(self, x: torch.Tensor, y: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """TF's cost: the sum over time steps of the mean-over-batch cross entropy.

        Its gradient is the one the tutorial's learning rate is tuned for; a plain
        mean would make the effective learning rate num_steps times smaller.
        """
        hidden, state = self.lstm(self.dropout(self.embedding(x)), state)
        hidden = self.dropout(hidden).flatten(0, 1)
        loss = LinearCrossEntropy.apply(hidden, self.softmax.weight, self.softmax.bias, y.flatten())
        return loss / x.size(0), state


class LinearCrossEntropy(torch.autograd.Function):
    """sum_i cross_entropy(hidden_i @ weight.T + bias, target_i), computed lean.

    Same value and gradient as `F.cross_entropy(F.linear(...), reduction="sum")`,
    but the [tokens, vocab] logits buffer is exponentiated once, in place, and
    then turned into its own gradient: no log-softmax copy, no zero-filled
    gradient buffer. On CPU that softmax traffic cost more than the LSTM.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, target):
        logits = torch.addmm(bias.to(hidden.dtype), hidden, weight.to(hidden.dtype).t())
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
        target_logit = logits.gather(1, target[:, None]).squeeze(1)
        row_max = logits.amax(dim=1, keepdim=True)
        exp = logits.sub_(row_max).exp_()  # logits are not needed again: reuse the buffer
        row_sum = exp.sum(dim=1, keepdim=True)
        loss = (row_sum.log() + row_max).squeeze(1).sub(target_logit).sum()
        ctx.save_for_backward(hidden, weight, exp, row_sum, target)
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss):
        hidden, weight, exp, row_sum, target = ctx.saved_tensors
        grad_logits = exp.mul_(grad_loss / row_sum)  # softmax * grad, in place
        rows = torch.arange(target.numel(), device=target.device)
        grad_logits[rows, target] -= grad_loss
        grad_logits = grad_logits.to(hidden.dtype)
        grad_hidden = grad_logits @ weight.to(hidden.dtype)
        grad_weight = grad_logits.t() @ hidden
        return grad_hidden, grad_weight.to(weight.dtype), grad_logits.sum(0).to(weight.dtype), None


def detach(state: State) -> State:
    """Truncated BPTT: keep the values, cut the graph between batches."""
    return state[0].detach(), state[1].detach()
