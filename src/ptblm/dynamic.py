"""Dynamic evaluation (Krause, Kahembwe, Murray & Renals 2018): score a segment of the
stream, then take a gradient step on it, so the model adapts to the text it has read.

Each segment is scored before the model learns from it: nothing is predicted after the
model has trained on it. The update pulls the weights back toward the trained ones:

    rms: theta -= lr * g / (sqrt(MS) + eps) - decay * rms_norm * (theta_0 - theta)
    sgd: theta -= lr * g                    - decay * (theta_0 - theta)

g is the gradient of the segment's mean cross entropy; MS the mean squared gradient of the
same loss over the start of the training split (`gradient_rms`), and rms_norm = sqrt(MS)
divided by its mean over all weights, capped at 1 / decay (Krause et al.'s "RMS
normalisation with a global prior"; the mean is over each weight tensor's mean, as in their
code). The trained model is never modified: a copy adapts.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from .data import batchify, epoch_size, iterate_batches
from .model import PTBModel, detach
from .progress import Progress

RULES = ("rms", "sgd")


@dataclass(frozen=True)
class DynamicSettings:
    learning_rate: float
    decay: float
    segment: int = 5  # tokens scored, then learned from, per update
    rule: str = "rms"
    epsilon: float = 1e-3  # rms: added to sqrt(MS)


def gradient_rms(
    model: PTBModel, train_ids: torch.Tensor, batch_size: int, num_steps: int, device
) -> list[torch.Tensor]:
    """sqrt(mean over windows of the squared gradient) per parameter: the training data's
    gradient scale, with dropout off, for the mean cross entropy of a window."""
    model = copy.deepcopy(model).to(device).eval()
    data = batchify(train_ids, batch_size).to(device)
    squares = [torch.zeros_like(p) for p in model.parameters()]
    state = model.zero_state(batch_size, device)
    windows = 0
    progress = Progress(epoch_size(train_ids.numel(), batch_size, num_steps), "gradient RMS")
    for x, y in iterate_batches(data, num_steps):
        model.zero_grad(set_to_none=True)
        hidden, state = model.features(x, state)
        loss = torch.nn.functional.cross_entropy(model.softmax(hidden).flatten(0, 1), y.flatten())
        loss.backward()
        for square, p in zip(squares, model.parameters(), strict=True):
            square.add_(p.grad * p.grad)
        state = detach(state)
        windows += 1
        progress.update()
    progress.close()
    if not windows:
        raise ValueError("the training ids hold no whole window for the gradient statistics")
    return [(square / windows).sqrt_() for square in squares]


def dynamic_logprobs(
    model: PTBModel,
    ids: torch.Tensor,
    settings: DynamicSettings,
    rms: list[torch.Tensor] | None,
    device: torch.device,
) -> torch.Tensor:
    """log p(target) [len(ids) - 1] float64 for every token but the first of `ids` (1-D),
    batch 1, state carried: each segment scored, then learned from."""
    if settings.rule == "rms" and rms is None:
        raise ValueError("the rms rule needs the training data's gradient statistics")
    model = copy.deepcopy(model).to(device).eval()  # dropout off; the caller's stays trained
    params = list(model.parameters())
    trained = [p.detach().clone() for p in params]
    steps, pulls = _update_terms(settings, rms, params)
    data = ids.view(1, -1).to(device)
    state = model.zero_state(1, device)
    out = []
    segments = -(-(ids.numel() - 1) // settings.segment)
    progress = Progress(segments, f"dynamic lr {settings.learning_rate:g}", unit="segment")
    for x, y in iterate_batches(data, settings.segment, include_tail=True):
        model.zero_grad(set_to_none=True)
        hidden, state = model.features(x, state)
        logp = torch.log_softmax(model.softmax(hidden)[0].float(), dim=-1)
        logp = logp.gather(1, y[0].unsqueeze(1)).squeeze(1)
        out.append(logp.detach().double())  # scored before the update below
        if settings.learning_rate:  # 0: the weights stay the trained ones, bit for bit
            (-logp.mean()).backward()
            with torch.no_grad():  # two passes over the weights: most of a segment's time
                torch._foreach_lerp_(params, trained, pulls)  # += pull * (theta_0 - theta)
                torch._foreach_addcmul_(params, steps, [p.grad for p in params], value=-1.0)
        state = detach(state)
        progress.update()
    progress.close()
    return torch.cat(out)


def _update_terms(
    settings: DynamicSettings, rms: list[torch.Tensor] | None, params: list[torch.Tensor]
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per parameter: what multiplies the gradient, and what multiplies (theta_0 - theta)."""
    lr, decay = settings.learning_rate, settings.decay
    if settings.rule == "sgd":
        return [torch.full_like(p, lr) for p in params], [torch.full_like(p, decay) for p in params]
    assert rms is not None and len(rms) == len(params)
    mean = torch.stack([r.mean() for r in rms]).mean()  # of each tensor's mean, as theirs
    cap = 1.0 / decay if decay > 0 else float("inf")
    steps = [lr / (r + settings.epsilon) for r in rms]
    return steps, [decay * (r / mean).clamp(max=cap) for r in rms]
