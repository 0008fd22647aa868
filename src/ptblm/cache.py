"""The neural cache (Grave, Joulin & Usunier 2017): a trained model's next-word distribution
mixed with one over the words that followed the recent hidden states most like the current.

    p_cache(w | t) = sum_{i in window, x_{i+1} = w} softmax_i(theta * h_t . h_i)
    p(w | t)       = (1 - lambda) * p_model(w | t) + lambda * p_cache(w | t)

h_i is the last layer's output (dropout off) that predicted x_{i+1}; the window holds the
`window` positions before t, so the cache only ever holds words already read. Nothing is
learned: theta and lambda are chosen on the valid split (`ptblm.adapt`). The stream is read
once, as `evaluate` reads a split (batch 1, state carried, windows of 1,000 steps); every
theta, lambda and window is then a cheap pass over the stored states.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .data import iterate_batches
from .device import autocast
from .model import PTBModel

READ_STEPS = 1000  # steps per forward call when reading a stream, as evaluate_split
CHUNK = 1024  # positions scored per cache matrix product


@dataclass(frozen=True)
class Stream:
    """A token stream as the static model reads it: for each predicted position t (every
    token but the first), the hidden state that predicts it, its target and log p_model."""

    hidden: torch.Tensor  # [T, hidden] float32
    targets: torch.Tensor  # [T] int64
    logp: torch.Tensor  # [T] float64: log p_model(target)

    def __len__(self) -> int:
        return self.targets.numel()


def read_stream(
    model: PTBModel, ids: torch.Tensor, device: torch.device, precision: str = "fp32"
) -> Stream:
    """Run the model over `ids` (1-D) at batch 1 with the state carried, as evaluate does."""
    model.eval()
    data = ids.view(1, -1).to(device)
    state = model.zero_state(1, device)
    hidden, targets, logp = [], [], []
    with torch.no_grad():
        for x, y in iterate_batches(data, READ_STEPS, include_tail=True):
            with autocast(device, precision):
                h, state = model.features(x, state)
                logits = model.softmax(h)
            logprobs = torch.log_softmax(logits[0].float(), dim=-1)
            hidden.append(h[0].float())
            targets.append(y[0])
            logp.append(logprobs.gather(1, y[0].unsqueeze(1)).squeeze(1).double())
    return Stream(torch.cat(hidden), torch.cat(targets), torch.cat(logp))


def cache_probs(
    stream: Stream, thetas: Sequence[float], window: int, chunk: int = CHUNK
) -> torch.Tensor:
    """p_cache(target_t | t) for every theta: [len(thetas), T] float64, NaN where the cache
    is empty (t = 0). The dot products are computed once for all thetas."""
    if window < 1:
        raise ValueError(f"window must be >= 1, not {window}")
    hidden, targets = stream.hidden, stream.targets
    length = len(stream)
    out = torch.empty(len(thetas), length, dtype=torch.float64, device=hidden.device)
    for start in range(0, length, chunk):
        end = min(start + chunk, length)
        first = max(0, start - window)
        dots = hidden[start:end] @ hidden[first:end].t()  # [C, K]: query t, key i
        query = torch.arange(start, end, device=hidden.device).unsqueeze(1)
        key = torch.arange(first, end, device=hidden.device).unsqueeze(0)
        in_window = (key < query) & (key >= query - window)
        same_word = targets[first:end].unsqueeze(0) == targets[start:end].unsqueeze(1)
        for row, theta in enumerate(thetas):
            weights = torch.softmax((theta * dots).masked_fill(~in_window, -torch.inf), dim=1)
            out[row, start:end] = (weights * same_word).sum(dim=1, dtype=torch.float64)
    return out


def mix(logp: torch.Tensor, p_cache: torch.Tensor, lam: float) -> torch.Tensor:
    """log((1 - lam) p_model + lam p_cache) of the targets, float64; p_model alone where the
    cache is empty. Written as log p_model + log1p(lam (p_cache / p_model - 1)), so that
    lam = 0 gives log p_model bit for bit."""
    ratio = p_cache * torch.exp(-logp)
    mixed = logp + torch.log1p(lam * (ratio - 1.0))
    return torch.where(torch.isnan(p_cache), logp, mixed)


def distribution(
    logits: torch.Tensor,
    history: torch.Tensor,
    followers: torch.Tensor,
    query: torch.Tensor,
    theta: float,
    lam: float,
) -> torch.Tensor:
    """The whole mixed distribution [vocab] at one position: the model's `logits` [vocab], the
    cached states `history` [K, hidden] and the words that followed them `followers` [K].
    What `cache_probs` and `mix` compute for the target alone; tests check one against
    the other, and that this sums to 1."""
    p_model = torch.softmax(logits.double(), dim=-1)
    if history.numel() == 0:
        return p_model
    weights = torch.softmax(theta * (history.double() @ query.double()), dim=0)
    p_cache = torch.zeros_like(p_model).index_add_(0, followers, weights)
    return (1.0 - lam) * p_model + lam * p_cache
