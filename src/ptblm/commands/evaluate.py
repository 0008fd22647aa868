"""`ptblm evaluate` (DVC stage evaluate): the tutorial's test scoring of the trained model."""

from __future__ import annotations

from pathlib import Path

import click

from .. import tracking
from ..config import load_params
from ..errors import PtblmError
from ..fsutil import md5_of, write_json
from .common import (
    METRICS_DIR,
    MODELS_DIR,
    PREPARED_DIR,
    RUN_FILE,
    fails_cleanly,
    model_option,
    params_option,
    stops_cleanly,
    tracking_option,
)


def _interrupted_note() -> str:
    return (
        "its MLflow run is marked KILLED and metrics/<config>/eval.json is as it was; run it "
        "again (dvc repro, dvc exp run) to evaluate"
    )


@click.command(name="evaluate")
@params_option
@model_option
@tracking_option
@fails_cleanly
@stops_cleanly(_interrupted_note)
def evaluate_command(params_path: Path, model_name: str | None, tracking_on: bool | None) -> None:
    """Test (and valid) perplexity as the tutorial scores it: batch 1, state carried.

    Logged to the training run when it follows training; an evaluation on its own (say,
    another evaluate.batch_size) gets its own MLflow run, nested under the training run.
    """
    params = load_params(params_path, model_name)  # before torch: bad params fail fast
    from ..data import load_corpus
    from ..device import device_description, set_precision, training_device, use_threads
    from ..epoch import evaluate_split
    from ..modelfile import load_for_config

    name = params.model
    model_file = MODELS_DIR / name / "model.pt"
    if not model_file.is_file():
        from ..whereabouts import missing_model_message, read_selection

        selected = read_selection(params_path)[1]  # params.yaml's own, not --model's
        raise PtblmError(missing_model_message(Path.cwd(), name, list(params.models), selected))
    corpus = load_corpus(PREPARED_DIR)
    use_threads(params.train.num_threads)  # as train: -j 2 on 2 cores, one thread each
    device = training_device(params.train.device, params.train.gpu_wait_s)
    set_precision(params.train.precision, device)
    model = load_for_config(model_file, name, params.config, corpus).to(device)
    batch = params.evaluate.batch_size
    enabled = params.tracking.enabled if tracking_on is None else tracking_on
    tracker = (
        tracking.open_evaluation(
            MODELS_DIR / name / RUN_FILE,
            f"{tracking.run_name(name)}-eval",
            {"config": name, "evaluate.batch_size": batch},
            tracking.run_tags(name, device.type, device_description(device)),
            params.tracking.system_metrics,
        )
        if enabled
        else tracking.NullTracker()
    )
    try:
        scores = {
            split: evaluate_split(
                model, corpus.splits[split], batch, device, params.train.precision, desc=split
            )
            for split in ("test", "valid")
        }
        eval_json = METRICS_DIR / name / "eval.json"
        write_json(
            eval_json,
            {
                "config": name,
                "test_perplexity": round(scores["test"].perplexity, 4),
                "valid_perplexity": round(scores["valid"].perplexity, 4),
                "batch_size": batch,
                "model_md5": md5_of(model_file),  # the model scored: train.json's must match
            },
        )
        evaluated = {
            "test_perplexity": scores["test"].perplexity,
            "eval_valid_perplexity": scores["valid"].perplexity,
            "eval_words_per_sec": scores["test"].words_per_sec,
        }
        if tracker.reopened:  # the training run's: its time from start to end
            evaluated["total_wall_time_s"] = tracker.elapsed_s()
        tracker.log_metrics({tracking.EVAL_METRICS[k]: v for k, v in evaluated.items()})
        tracker.log_artifacts([eval_json])
    except KeyboardInterrupt:  # SIGINT, or SIGTERM (stops_cleanly)
        tracker.end(killed=True)
        raise
    except BaseException:
        tracker.end(failed=True)
        raise
    tracker.end()
    click.echo(
        f"{name}: test ppl {scores['test'].perplexity:.2f}, valid ppl "
        f"{scores['valid'].perplexity:.2f} ({scores['test'].words_per_sec:,.0f} words/s)"
    )
