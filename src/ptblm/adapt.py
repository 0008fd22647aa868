"""Test-time adaptation of a trained model, tuned on the valid split only: the neural cache
(`ptblm.cache`) and dynamic evaluation (`ptblm.dynamic`).

Each method's grid is scored on the valid split, the best point chosen, and only then is
the test split scored, once, with it. The functions here take the splits' ids as arguments:
`tune_*` never sees the test ids, so the tuning cannot read them.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from .api import LanguageModel
from .cache import Stream, cache_probs, mix, read_stream
from .config import CacheParams, DynamicParams
from .dynamic import DynamicSettings, dynamic_logprobs
from .epoch import perplexity
from .model import PTBModel
from .score import Score, Sentence, stream_ids

Report = Callable[[str], None]


def stream_perplexity(logp: torch.Tensor) -> float:
    """exp of the mean negative log-probability (`epoch.perplexity`, float64 sums)."""
    return perplexity(-logp.sum().item(), logp.numel())


@dataclass(frozen=True)
class CacheChoice:
    window: int
    theta: float
    weight: float


@dataclass
class Tuned:
    """A method's chosen point, its valid perplexity, and every grid point's."""

    choice: CacheChoice | DynamicSettings
    valid_perplexity: float
    grid: list[dict] = field(default_factory=list)


def cache_logprobs(stream: Stream, choice: CacheChoice) -> torch.Tensor:
    p = cache_probs(stream, [choice.theta], choice.window)[0]
    return mix(stream.logp, p, choice.weight)


def adapted_logprobs(
    model: PTBModel,
    ids: torch.Tensor,
    device: torch.device,
    how: CacheChoice | DynamicSettings,
    rms: list[torch.Tensor] | None = None,
) -> torch.Tensor:
    """log p of every token but the first of `ids` (1-D) read as one stream, batch 1, with the
    cache or with dynamic evaluation (`rms`: the training data's gradient RMS, for its rule)."""
    if isinstance(how, CacheChoice):
        return cache_logprobs(read_stream(model, ids, device), how)
    return dynamic_logprobs(model, ids, how, rms, device)


def score_adapted(
    lm: LanguageModel,
    sentences: Sequence[Sentence],
    device: torch.device | str,
    how: CacheChoice | DynamicSettings,
    rms: list[torch.Tensor] | None = None,
) -> tuple[Score, float]:
    """`ptblm score --carry-state` with the cache or dynamic evaluation: the total, and
    tokens per second."""
    ids = stream_ids(lm, sentences)
    start = time.perf_counter()
    logp = adapted_logprobs(lm.model, ids, torch.device(device), how, rms)
    seconds = time.perf_counter() - start
    words = sum(len(s.words) for s in sentences)
    oov = sum(len(s.oov) for s in sentences)
    total = Score(None, words, oov, logp.sum().item(), stream_perplexity(logp))
    return total, logp.numel() / seconds if seconds > 0 else float("inf")


def tune_cache(valid: Stream, grid: CacheParams, report: Report = print) -> Tuned:
    """Every (window, theta, weight) on the valid stream; the lowest perplexity wins."""
    best: Tuned | None = None
    rows = []
    for window in grid.window:
        probs = cache_probs(valid, grid.theta, window)  # one matrix product for every theta
        for (i, theta), weight in itertools.product(enumerate(grid.theta), grid.weight):
            ppl = stream_perplexity(mix(valid.logp, probs[i], weight))
            rows.append(
                {
                    "window": window,
                    "theta": theta,
                    "weight": weight,
                    "valid_perplexity": round(ppl, 4),
                }
            )
            if best is None or ppl < best.valid_perplexity:
                best = Tuned(CacheChoice(window, theta, weight), ppl)
        report(f"cache: window {window} done, best so far {best.valid_perplexity:.2f}")
    assert best is not None  # params guarantee a non-empty grid
    best.grid = rows
    return best


def dynamic_settings(grid: DynamicParams) -> list[DynamicSettings]:
    return [
        DynamicSettings(lr, decay, grid.segment, grid.rule, grid.epsilon)
        for lr, decay in itertools.product(grid.learning_rate, grid.decay)
    ]


def tune_dynamic(
    model: PTBModel,
    valid_ids: torch.Tensor,
    grid: DynamicParams,
    rms: list[torch.Tensor] | None,
    device: torch.device,
    report: Report = print,
) -> Tuned:
    """Every (learning_rate, decay) adapting along the valid split; the lowest perplexity
    wins. Each point starts again from the trained weights."""
    best: Tuned | None = None
    rows = []
    points = dynamic_settings(grid)
    start = time.perf_counter()
    for n, settings in enumerate(points, start=1):
        ppl = stream_perplexity(dynamic_logprobs(model, valid_ids, settings, rms, device))
        rows.append(
            {
                "learning_rate": settings.learning_rate,
                "decay": settings.decay,
                "valid_perplexity": round(ppl, 4),
            }
        )
        if best is None or ppl < best.valid_perplexity:
            best = Tuned(settings, ppl)
        elapsed = time.perf_counter() - start
        report(
            f"dynamic {n}/{len(points)}: lr {settings.learning_rate:g} decay {settings.decay:g}"
            f" valid ppl {ppl:.2f} (ETA {elapsed / n * (len(points) - n):.0f} s)"
        )
    assert best is not None
    best.grid = rows
    return best
