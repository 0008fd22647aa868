"""One pass over a split: training and scoring epochs, perplexity, the test evaluation.

Costs stay on the device during a pass; a non-finite one stops it with the epoch and step.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
from tqdm import tqdm

from .data import batchify, iterate_batches
from .device import autocast
from .errors import TrainingError
from .model import PTBModel, State
from .step import TrainStep


@dataclass
class EpochResult:
    perplexity: float
    words: int
    seconds: float

    @property
    def words_per_sec(self) -> float:
        return self.words / self.seconds if self.seconds > 0 else float("nan")


def run_epoch(
    model: PTBModel,
    data: torch.Tensor,
    num_steps: int,
    *,
    step: TrainStep | None = None,
    precision: str = "fp32",
    include_tail: bool = False,
    desc: str = "",
    epoch: int = 0,
    quiet: bool = False,
) -> EpochResult:
    """One pass over `data` ([batch, len] on the model's device), state carried.

    With a `step` it trains (dropout on); without, it only scores. Costs are summed
    on the device; the host reads them only when the progress bar refreshes. `quiet`: no
    progress bar (the ranks of a distributed run other than 0).
    """
    training = step is not None
    model.train(training)
    batch_size, batch_len = data.shape
    steps = (batch_len - 1) // num_steps + int(include_tail and (batch_len - 1) % num_steps > 0)
    device = data.device
    if training:
        step.reset_state()
    else:
        state: State = model.zero_state(batch_size, device)
    step_costs = torch.zeros(steps, device=device, dtype=torch.float64)
    iters = 0
    start = time.perf_counter()
    bar = tqdm(
        total=steps,
        desc=desc,
        unit="step",
        leave=False,
        mininterval=1.0,
        disable=True if quiet else None,
    )
    refresh_every = max(1, steps // 20)
    with torch.set_grad_enabled(training):
        for i, (x, y) in enumerate(iterate_batches(data, num_steps, include_tail)):
            if training:
                cost = step(x, y)
            else:
                with autocast(device, precision):
                    cost, state = model.cost(x, y, state)
            step_costs[i] = cost
            iters += x.size(1)
            bar.update(1)
            if (i + 1) % refresh_every == 0 or i + 1 == steps:
                _check_finite(step_costs, i + 1, epoch, desc)
                bar.set_postfix(ppl=f"{perplexity(step_costs[: i + 1].sum().item(), iters):.2f}")
    bar.close()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    total = step_costs.sum().item()
    return EpochResult(perplexity(total, iters), iters * batch_size, seconds)


def perplexity(total_cost: float, steps: int) -> float:
    """exp(costs / iters), inf rather than OverflowError for a model gone wild; NaN stays NaN."""
    mean = total_cost / steps
    if math.isnan(mean):
        return math.nan
    return math.exp(mean) if mean < 709.0 else math.inf


def _check_finite(step_costs: torch.Tensor, done: int, epoch: int, desc: str) -> None:
    """Stop at the first non-finite cost, naming the epoch, the split (in `desc`) and the step;
    epoch 0 means scoring a trained model, not training one."""
    bad = (~torch.isfinite(step_costs[:done])).nonzero()
    if bad.numel():
        step = int(bad[0]) + 1
        fix = (
            "training diverged: lower learning_rate or max_grad_norm"
            if epoch
            else "the model gives non-finite scores: retrain it"
        )
        raise TrainingError(
            f"{desc or 'run'}: loss is {step_costs[step - 1].item()} at step {step}; {fix}"
        )


def evaluate_split(
    model: PTBModel,
    ids: torch.Tensor,
    batch_size: int,
    device: torch.device,
    precision: str = "fp32",
    desc: str = "eval",
) -> EpochResult:
    """The tutorial's test evaluation (num_steps=1, state carried), in long windows.

    Every token of each row but the first is predicted exactly once, as with
    num_steps=1; windows of 1,000 steps give the same sums in far fewer calls.
    """
    data = batchify(ids, batch_size).to(device)
    return run_epoch(model, data, 1000, precision=precision, include_tail=True, desc=desc)
