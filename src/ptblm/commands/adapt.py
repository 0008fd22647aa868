"""`ptblm adapt` (DVC stage adapt): test perplexity with the neural cache and with dynamic
evaluation, each tuned on the valid split, then scored once on the test split."""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path

import click

from .. import tracking
from ..config import load_params
from ..fsutil import md5_of, save_tensors, write_json, write_text
from ..progress import say
from .common import (
    GRADIENT_RMS,
    METRICS_DIR,
    MODELS_DIR,
    PREPARED_DIR,
    RUN_FILE,
    TIMINGS_DIR,
    TUNING_DIR,
    fails_cleanly,
    model_option,
    params_option,
    tracking_option,
)

GRADIENT_BATCH = 100  # rows of the training split for dynamic evaluation's gradient RMS


def grid_csv(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


@click.command(name="adapt")
@params_option
@model_option
@tracking_option
@fails_cleanly
def adapt_command(params_path: Path, model_name: str | None, tracking_on: bool | None) -> None:
    """Test perplexity with the neural cache (Grave et al. 2017) and with dynamic evaluation
    (Krause et al. 2018), beside the static one.

    The grids under `adapt` in params.yaml are scored on the valid split; the test split
    is read only after both methods are tuned, and scored once with the chosen points.
    Writes metrics/<config>/adapt.json, tuning/<config>/{cache,dynamic}_grid.csv and
    timings/<config>/adapt.json, and logs the figures into the config's MLflow run
    (test_perplexity_cache, test_perplexity_dynamic). The model file is never modified.
    """
    params = load_params(params_path, model_name)  # before torch: bad params fail fast
    from ..adapt import cache_logprobs, stream_perplexity, tune_cache, tune_dynamic
    from ..cache import read_stream
    from ..data import Corpus, load_split, load_vocab
    from ..device import set_precision, training_device, use_threads
    from ..dynamic import dynamic_logprobs, gradient_rms
    from ..modelfile import load_for_config

    name, grid = params.model, params.adapt
    use_threads(params.train.num_threads)
    device = training_device(params.train.device, params.train.gpu_wait_s)
    set_precision(params.train.precision, device)
    model_file = MODELS_DIR / name / "model.pt"
    vocab_only = Corpus(load_vocab(PREPARED_DIR), {})  # the splits are read one at a time
    model = load_for_config(model_file, name, params.config, vocab_only).to(device)

    # Tuning: the valid split (and the training split's gradient scale), never the test split.
    rms = None
    if grid.dynamic.rule == "rms":
        say("dynamic: the gradient's RMS over the training split ...")
        train_ids = load_split(PREPARED_DIR, "train")
        train_ids = train_ids[: grid.dynamic.gradient_tokens or None]
        rms = gradient_rms(model, train_ids, GRADIENT_BATCH, grid.dynamic.segment, device)
    valid_ids = load_split(PREPARED_DIR, "valid")
    valid = read_stream(model, valid_ids, device, params.train.precision)
    cache = tune_cache(valid, grid.cache, say)
    dynamic = tune_dynamic(model, valid_ids, grid.dynamic, rms, device, say)

    # Then the test split, once, with the chosen points.
    test_ids = load_split(PREPARED_DIR, "test")
    start = time.perf_counter()
    test = read_stream(model, test_ids, device, params.train.precision)
    static_s = time.perf_counter() - start
    cache_test = stream_perplexity(cache_logprobs(test, cache.choice))
    cache_s = time.perf_counter() - start
    start = time.perf_counter()
    dynamic_test = stream_perplexity(dynamic_logprobs(model, test_ids, dynamic.choice, rms, device))
    dynamic_s = time.perf_counter() - start
    static_test = stream_perplexity(test.logp)

    words = len(test)
    results = {
        "config": name,
        "static_test_perplexity": round(static_test, 4),
        "cache": {
            "test_perplexity": round(cache_test, 4),
            "valid_perplexity": round(cache.valid_perplexity, 4),
            "window": cache.choice.window,
            "theta": cache.choice.theta,
            "weight": cache.choice.weight,
        },
        "dynamic": {
            "test_perplexity": round(dynamic_test, 4),
            "valid_perplexity": round(dynamic.valid_perplexity, 4),
            "rule": dynamic.choice.rule,
            "segment": dynamic.choice.segment,
            "learning_rate": dynamic.choice.learning_rate,
            "decay": dynamic.choice.decay,
            "epsilon": dynamic.choice.epsilon,
        },
        "model_md5": md5_of(model_file),  # the model adapted: train.json's must match
    }
    adapt_json = METRICS_DIR / name / "adapt.json"
    speed_json = TIMINGS_DIR / name / "adapt.json"
    grids = {method: TUNING_DIR / name / f"{method}_grid.csv" for method in ("cache", "dynamic")}
    if rms is not None:  # for `ptblm score --dynamic`, which has no training data at hand
        names = [n for n, _ in model.named_parameters()]
        save_tensors(dict(zip(names, rms, strict=True)), MODELS_DIR / name / GRADIENT_RMS)
    write_text(grids["cache"], grid_csv(cache.grid))
    write_text(grids["dynamic"], grid_csv(dynamic.grid))
    write_json(
        speed_json,
        {  # test split, words/s: reading it (static), + the cache, dynamic evaluation
            "static_words_per_sec": round(words / static_s, 1),
            "cache_words_per_sec": round(words / cache_s, 1),
            "dynamic_words_per_sec": round(words / dynamic_s, 1),
            "device": str(device),
        },
    )
    write_json(adapt_json, results)

    enabled = params.tracking.enabled if tracking_on is None else tracking_on
    if enabled:
        tracker = tracking.open_adaptation(MODELS_DIR / name / RUN_FILE)
        tracker.log_metrics(
            {
                "test_perplexity_cache": cache_test,
                "test_perplexity_dynamic": dynamic_test,
                f"{tracking.AUX}adapt_valid_perplexity_cache": cache.valid_perplexity,
                f"{tracking.AUX}adapt_valid_perplexity_dynamic": dynamic.valid_perplexity,
            }
        )
        tracker.set_tags(
            {f"adapt.cache.{k}": v for k, v in results["cache"].items() if "perplexity" not in k}
            | {
                f"adapt.dynamic.{k}": v
                for k, v in results["dynamic"].items()
                if "perplexity" not in k
            }
        )
        tracker.log_artifacts([adapt_json, speed_json, *grids.values()])
        tracker.end()
    say(
        f"{name}: test ppl static {static_test:.2f}, cache {cache_test:.2f} "
        f"({_change(cache_test, static_test)}), dynamic {dynamic_test:.2f} "
        f"({_change(dynamic_test, static_test)})"
    )


def _change(adapted: float, static: float) -> str:
    return f"{100 * (adapted / static - 1):+.1f}%"
