"""The Zaremba et al. (2014) LSTM language model (TF tutorial `PTBModel`), in PyTorch, with
the variants of docs/reproduction.md ("Beyond the 2014 model"): GRU cells, tied weights
and variational dropout, each a `ModelConfig` switch."""

from __future__ import annotations

import functools

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from .config import ModelConfig

# The recurrent state, each tensor [num_layers, batch, hidden]: (h, c) for an LSTM, (h,) for
# a GRU. Everything that carries, zeroes or detaches it treats it as a tuple of any length.
State = tuple[torch.Tensor, ...]


class PTBModel(nn.Module):
    """Embedding -> dropout -> stacked LSTM or GRU (dropout after every layer) -> softmax layer.

    `nn.LSTM` computes the same function family as TF's BasicLSTMCell(forget_bias=0):
    two bias vectors instead of one and another gate order, both zero-initialised
    so the sum starts at TF's zeros. Dropout sits on the embedding output, between
    layers and on the last layer's output; none is recurrent. Standard dropout is
    per element (between layers nn.LSTM's own, so cuDNN runs all layers in one call);
    variational dropout draws one mask per sequence per call (`LockedDropout`), which
    nn.LSTM cannot put between its layers: the layers then run one call each.
    With `tie_weights` the embedding is the softmax weight, transposed: one tensor (see
    `embed`).
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        drop = 1.0 - config.keep_prob
        rnn_class = nn.LSTM if config.cell == "lstm" else nn.GRU
        # construction order = the RNG draws of the default init: keep it as it was
        if not config.tie_weights:
            self.embedding = nn.Embedding(config.vocab_size, config.hidden_size)
        size = config.hidden_size
        if config.dropout == "variational":
            self.dropout = LockedDropout(drop)
            layers = [rnn_class(size, size, batch_first=True) for _ in range(config.num_layers)]
            rnn = nn.ModuleList(layers)
        else:
            self.dropout = nn.Dropout(drop)
            between = drop if config.num_layers > 1 else 0.0
            rnn = rnn_class(size, size, config.num_layers, dropout=between, batch_first=True)
        self.add_module(config.cell, rnn)  # named `lstm` or `gru` in the state dict
        self.softmax = Softmax(config.hidden_size, config.vocab_size)
        self.reset_parameters()

    @property
    def rnn(self) -> nn.Module:
        """The recurrent layers: one nn.LSTM/nn.GRU, or (variational) a list of one-layer ones."""
        return self._modules[self.config.cell]

    def reset_parameters(self) -> None:
        """Every weight uniform in [-init_scale, init_scale]; LSTM/GRU biases zero (as TF)."""
        scale = self.config.init_scale
        for name, param in self.named_parameters():
            if name.startswith(self.config.cell) and name.rsplit(".", 1)[1].startswith("bias"):
                nn.init.zeros_(param)
            else:
                nn.init.uniform_(param, -scale, scale)

    def zero_state(self, batch_size: int, device: torch.device | str = "cpu") -> State:
        shape = (self.config.num_layers, batch_size, self.config.hidden_size)
        count = 2 if self.config.cell == "lstm" else 1
        return tuple(torch.zeros(shape, device=device) for _ in range(count))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Word vectors [batch, steps, hidden] for ids `x` [batch, steps].

        Tied (Press & Wolf 2017, Inan et al. 2017), the embedding is the transpose of the
        softmax weight [hidden, vocab]: its columns. Read with index_select on that tensor,
        the embedding's gradient comes in the same [hidden, vocab] layout as the softmax's,
        so autograd sums the two in one plain pass, and the softmax keeps TF's fast layout.
        """
        if not self.config.tie_weights:
            return self.embedding(x)
        columns = self.softmax.weight.index_select(1, x.flatten())  # [hidden, batch * steps]
        return columns.t().unflatten(0, x.shape)

    def forward(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """Logits [batch, steps, vocab] for ids `x` [batch, steps], and the next state."""
        hidden, state = self.features(x, state)
        return self.softmax(hidden), state

    def cost(self, x: torch.Tensor, y: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """TF's cost: the sum over time steps of the mean-over-batch cross entropy.

        Its gradient is the one the tutorial's learning rate is tuned for; a plain
        mean would make the effective learning rate num_steps times smaller.
        """
        hidden, state = self.features(x, state)
        hidden = hidden.flatten(0, 1)
        loss = LinearCrossEntropy.apply(hidden, self.softmax.weight, self.softmax.bias, y.flatten())
        return loss / x.size(0), state

    def features(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """The softmax layer's input [batch, steps, hidden], dropout applied; the next state."""
        inputs = self.dropout(self.embed(x))
        if not isinstance(self.rnn, nn.ModuleList):
            hidden, state = _run(self.rnn, inputs, state)
            return self.dropout(hidden), state
        layer_states = []
        for i, layer in enumerate(self.rnn):
            inputs, layer_state = _run(layer, inputs, tuple(s[i : i + 1] for s in state))
            inputs = self.dropout(inputs)  # a new mask between layers, and on the last output
            layer_states.append(layer_state)
        return inputs, tuple(torch.cat(parts) for parts in zip(*layer_states, strict=True))


def _run(rnn: nn.Module, inputs: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
    """nn.LSTM takes and returns (h, c); nn.GRU a bare h: both as a `State` tuple here."""
    if len(state) == 2:
        return rnn(inputs, state)
    hidden, h = rnn(inputs, state[0])
    return hidden, (h,)


class LockedDropout(nn.Module):
    """Variational dropout (Gal & Ghahramani 2016) without the recurrent mask, "locked" as
    in AWD-LSTM: one mask per sequence (batch row) per call, i.e. per training window,
    the same at every time step; off in evaluation. x: [batch, steps, features]."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty(x.size(0), 1, x.size(2)).bernoulli_(keep).div_(keep)
        return x * mask

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Softmax(nn.Module):
    """TF's softmax layer: logits = hidden @ softmax_w + softmax_b, softmax_w [hidden, vocab].

    TF's layout rather than nn.Linear's [vocab, hidden]: with it, all three products
    of a training step (the logits, the hidden and the weight gradients) reach
    oneDNN in the layouts it multiplies fastest (see `matmul`). On CPU they are
    about three quarters of a small-config step. Tied, its weight is the embedding too.
    """

    def __init__(self, hidden_size: int, vocab_size: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(hidden_size, vocab_size))
        self.bias = nn.Parameter(torch.empty(vocab_size))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.matmul(hidden, self.weight) + self.bias


def matmul(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """a @ b (+ bias), through oneDNN for float32 CPU tensors when this torch build has it.

    torch sends float32 CPU matmuls to MKL; on the softmax layer's products oneDNN
    is faster, by 8-49% on a 2-core AVX-512 AMD CPU (`benchmarks/matmul.py` prints
    the figures). Both are float32 products; only the summation order differs.
    """
    onednn_linear = _onednn_linear() if a.device.type == "cpu" else None
    if onednn_linear is not None and a.dtype == b.dtype == torch.float32:
        return onednn_linear(a, b.t(), bias, "none", [], "")  # a @ b.t().t() + bias
    return a @ b if bias is None else torch.addmm(bias, a, b)


@functools.cache
def _onednn_linear():
    """torch's oneDNN linear op (the one inductor uses), or None if absent or not working."""
    if not torch.backends.mkldnn.is_available():
        return None
    try:
        op = torch.ops.mkldnn._linear_pointwise
        a, b = torch.arange(12.0).view(3, 4), torch.arange(20.0).view(5, 4).cos()  # no RNG use
        if torch.allclose(op(a, b, None, "none", [], ""), a @ b.t(), rtol=1e-5, atol=1e-5):
            return op
    except (AttributeError, RuntimeError):
        pass
    return None


class LinearCrossEntropy(torch.autograd.Function):
    """sum_i cross_entropy(hidden_i @ weight + bias, target_i), with few passes over the logits.

    Same value and gradient as `F.cross_entropy(hidden @ weight + bias, reduction="sum")`
    up to float rounding, but the [tokens, vocab] logits buffer (16 MB per small-config
    step, which memory bandwidth makes the costly part on CPU) is touched only three
    times after the product that writes it: one fused softmax in place, whose output
    becomes its own gradient, and the two products that read that gradient.

    The loss is logsumexp(logits) - logit[target], finite at any logit gap, as
    F.cross_entropy's is (-log(softmax at the target) turns inf once that probability
    underflows float32, at a gap of ~104 nats). logsumexp comes from two cheap row
    maxima rather than torch.logsumexp's extra passes: with m the largest logit and
    S = sum(exp(logits - m)), the softmax's largest entry is exp(0) / S = 1 / S, which
    never underflows (S <= vocab), so logsumexp = m + log(S) = m - log(max softmax).
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, target):
        logits = matmul(hidden, weight.to(hidden.dtype), bias.to(hidden.dtype))
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
        rows = torch.arange(target.numel(), device=target.device)
        target_logits = logits[rows, target]  # copies: read before the softmax overwrites
        row_max = logits.amax(dim=1)
        probs = torch.softmax(logits, dim=1, out=logits)
        target_probs = probs[rows, target]
        ctx.save_for_backward(hidden, weight, probs, target_probs, target)
        log_sum_exp = row_max - probs.amax(dim=1).log()
        return (log_sum_exp - target_logits).sum()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss):
        hidden, weight, probs, target_probs, target = ctx.saved_tensors
        rows = torch.arange(target.numel(), device=target.device)
        grad_logits = probs.index_put_((rows, target), target_probs - 1)  # softmax - one_hot
        grad_logits = grad_logits.to(hidden.dtype)
        grad_hidden = matmul(grad_logits, weight.to(hidden.dtype).t()).mul_(grad_loss)
        # [hidden | 1]^T @ grad_logits: the weight gradient with the bias gradient as its last
        # row, so the bias costs no pass of its own; grad_loss scales the small operand.
        ones = hidden.new_ones(hidden.size(0), 1)
        scaled = torch.cat([hidden, ones], dim=1).mul_(grad_loss)
        grad_weight_bias = matmul(scaled.t(), grad_logits).to(weight.dtype)
        return grad_hidden, grad_weight_bias[:-1], grad_weight_bias[-1], None


def detach(state: State) -> State:
    """Truncated BPTT: keep the values, cut the graph between batches."""
    return tuple(s.detach() for s in state)
