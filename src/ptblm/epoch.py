"""One pass over a split: training and scoring epochs, perplexity, the test evaluation.

Costs stay on the device during a pass; a non-finite one stops it with the epoch and step.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from tqdm import tqdm

from .data import batchify, iterate_batches
from .device import autocast
from .errors import TrainingError
from .model import PTBModel, State
from .progress import PROGRESS_EVERY_S, say
from .step import TrainStep


@dataclass
class EpochResult:
    perplexity: float
    words: int
    seconds: float

    @property
    def words_per_sec(self) -> float:
        return self.words / self.seconds if self.seconds > 0 else float("nan")


def train_epoch(
    model: PTBModel,
    data: torch.Tensor,
    num_steps: int,
    step: TrainStep,
    *,
    desc: str = "",
    epoch: int = 0,
    quiet: bool = False,
) -> EpochResult:
    """One training pass over `data` ([batch, len] on the model's device): dropout on, the
    step's carried state zeroed first, as at the start of every tutorial epoch."""
    model.train()
    step.reset_state()
    with torch.enable_grad():
        return _pass(data, num_steps, step, desc=desc, epoch=epoch, quiet=quiet)


def score_epoch(
    model: PTBModel,
    data: torch.Tensor,
    num_steps: int,
    precision: str = "fp32",
    *,
    include_tail: bool = False,
    desc: str = "",
    epoch: int = 0,
    quiet: bool = False,
) -> EpochResult:
    """Score `data` ([batch, len] on the model's device) without training: dropout off, no
    gradients, state carried from zero. `include_tail`: see `iterate_batches`."""
    model.eval()
    device = data.device
    state: State = model.zero_state(data.size(0), device)

    def cost_of(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        nonlocal state
        with autocast(device, precision):
            cost, state = model.cost(x, y, state)
        return cost

    with torch.no_grad():
        return _pass(
            data, num_steps, cost_of, include_tail=include_tail, desc=desc, epoch=epoch, quiet=quiet
        )


def _pass(
    data: torch.Tensor,
    num_steps: int,
    cost_of: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    *,
    include_tail: bool = False,
    desc: str,
    epoch: int,
    quiet: bool,
) -> EpochResult:
    """The loop both epochs share: `cost_of(x, y)` on every window in order (it carries the
    state). Costs are summed on the device; the host reads them only when the progress bar
    refreshes. `quiet`: no progress bar (the ranks of a distributed run other than 0).
    """
    batch_size, batch_len = data.shape
    steps = (batch_len - 1) // num_steps + int(include_tail and (batch_len - 1) % num_steps > 0)
    device = data.device
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
    plain = not quiet and bar.disable  # no terminal: lines instead of the bar
    said = start
    refresh_every = max(1, steps // 20)
    for i, (x, y) in enumerate(iterate_batches(data, num_steps, include_tail)):
        step_costs[i] = cost_of(x, y)
        iters += x.size(1)
        bar.update(1)
        if (i + 1) % refresh_every == 0 or i + 1 == steps:
            _check_finite(step_costs, i + 1, epoch, desc)
            ppl = perplexity(step_costs[: i + 1].sum().item(), iters)
            bar.set_postfix(ppl=f"{ppl:.2f}")
            now = time.perf_counter()
            if plain and i + 1 < steps and now - said >= PROGRESS_EVERY_S:
                said = now
                say(
                    f"  {desc or 'pass'}: step {i + 1}/{steps} ({100 * (i + 1) / steps:.0f}%), "
                    f"ppl {ppl:.2f}, {now - start:.0f} s"
                )
    bar.close()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    total = step_costs.sum().item()
    return EpochResult(perplexity(total, iters), iters * batch_size, seconds)


def perplexity(total_cost: float, count: int) -> float:
    """exp(total_cost / count): the cost in nats (minus a log-probability) summed over `count`
    tokens, or time steps of batch-mean costs; inf rather than OverflowError for a model gone
    wild, and NaN stays NaN. Training, evaluation and `ptblm score` all report this one."""
    mean = total_cost / count
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
    return score_epoch(model, data, 1000, precision, include_tail=True, desc=desc)
