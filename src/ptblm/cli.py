"""`ptblm`: one command per pipeline stage, plus tools. DVC calls these through stages/."""

from __future__ import annotations

import csv
import functools
import io
import sys
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from . import tracking
from .config import Params, load_params
from .errors import PtblmError
from .fsutil import write_json, write_text

if TYPE_CHECKING:
    from .train import TrainResult

RAW_ARCHIVE = Path("data/raw/simple-examples.tgz")
TEXT_DIR = Path("data/ptb")
PREPARED_DIR = Path("data/prepared")
MODELS_DIR = Path("models")
# Per config: metrics/<config>/ only DVC metrics, plots/<config>/ only plot data, timings
# apart (dvc.yaml lists the first two folders whole, so new configs list themselves).
METRICS_DIR = Path("metrics")
PLOTS_DIR = Path("plots")
TIMINGS_DIR = Path("timings")
CHECKPOINT_DIR = Path("checkpoints")
RUN_FILE = "mlflow_run.json"  # models/<config>/: the MLflow run id train hands to evaluate

params_option = click.option(
    "--params",
    "params_path",
    type=click.Path(path_type=Path),
    default=Path("params.yaml"),
    show_default=True,
    help="The params file to read.",
)
model_option = click.option(
    "--model",
    "model_name",
    default=None,
    help="Config to use instead of params.yaml's `model` (small, medium, large, test).",
)


def fails_cleanly(command):
    """Expected failures become one line on stderr and exit code 1, not a traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except PtblmError as exc:
            raise click.ClickException(str(exc)) from None

    return wrapper


def _params(params_path: Path, model_name: str | None = None) -> Params:
    params = load_params(params_path)
    return params.with_model(model_name) if model_name else params


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="ptblm")
def main() -> None:
    """Zaremba et al. (2014) PTB language models: the stages of the DVC pipeline, and tools.

    Run the whole pipeline with `dvc repro`; each command here is one stage.
    """


@main.command()
@params_option
@click.option("--out", type=click.Path(path_type=Path), default=RAW_ARCHIVE, show_default=True)
@fails_cleanly
def fetch(params_path: Path, out: Path) -> None:
    """Download simple-examples.tgz ($PTBLM_DATA_SOURCE, data.sources, data.file_sources)."""
    from .fetch import candidate_sources, fetch_archive

    data = load_params(params_path).data
    used = fetch_archive(
        candidate_sources(data.sources),
        out,
        timeout_s=data.timeout_s,
        retries=data.retries,
        backoff_s=data.backoff_s,
        file_sources=data.file_sources,
    )
    click.echo(f"fetched {out} from {used}")


@main.command()
@click.option("--archive", type=click.Path(path_type=Path), default=RAW_ARCHIVE, show_default=True)
@click.option("--out", type=click.Path(path_type=Path), default=TEXT_DIR, show_default=True)
@fails_cleanly
def extract(archive: Path, out: Path) -> None:
    """Extract and verify (MD5) ptb.{train,valid,test}.txt, refusing unsafe archives."""
    from .archive import extract_ptb

    for name, digest in extract_ptb(archive, out).items():
        click.echo(f"{out / name}  md5 {digest}  ok")


@main.command()
@click.option("--text-dir", type=click.Path(path_type=Path), default=TEXT_DIR, show_default=True)
@click.option("--out", type=click.Path(path_type=Path), default=PREPARED_DIR, show_default=True)
@click.option(
    "--metrics",
    type=click.Path(path_type=Path),
    default=METRICS_DIR / "prepare.json",
    show_default=True,
)
@fails_cleanly
def prepare(text_dir: Path, out: Path, metrics: Path) -> None:
    """Build the vocabulary (TF reader order) and the id arrays of the three splits."""
    from .data import prepare as prepare_corpus

    stats = prepare_corpus(text_dir, out)
    write_json(metrics, stats)
    tokens = ", ".join(f"{k} {v:,}" for k, v in stats["tokens"].items())
    click.echo(f"vocabulary {stats['vocab_size']:,} words; tokens: {tokens}")


def _history_csv(history: list[dict]) -> str:
    """Only what the model learned: timings live in timings/, so unchanged runs diff clean."""
    columns = ["epoch", "lr", "train_perplexity", "valid_perplexity"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    return buffer.getvalue()


def _run_params(params: Params) -> dict[str, Any]:
    """Every value that can make two runs differ: the config's hyperparameters, the shared
    settings, the evaluation batch size."""
    shared = {f"train.{k}": v for k, v in asdict(params.train).items()}
    return {
        "config": params.model,
        **asdict(params.config),
        **shared,
        "evaluate.batch_size": params.evaluate.batch_size,
    }


def _log_training(
    tracker: tracking.NullTracker, result: TrainResult, files: list[Path], model_path: Path
) -> None:
    """End-of-training metrics, the epochs a resumed run did before this process (so its
    curves are whole), the files worth comparing, and the model as a text scorer."""
    for record in result.history[: result.resumed_from_epoch]:
        tracker.log_epoch(record)
    tracker.set_tags(
        {
            "resumed": bool(result.resumed_from_epoch),
            "resumed_from_epoch": result.resumed_from_epoch,
        }
    )
    tracker.log_metrics(
        {
            "final_train_perplexity": result.train_perplexity,
            "final_valid_perplexity": result.valid_perplexity,
            "mean_words_per_sec": result.words_per_sec,
            "train_wall_time_s": result.wall_time_s,
        }
    )
    tracker.log_artifacts([PREPARED_DIR / "vocab.txt", *files])
    tracker.log_model(model_path, PREPARED_DIR / "vocab.txt")


@main.command(name="train")
@params_option
@model_option
@click.option(
    "--tracking/--no-tracking",
    "tracking_on",
    default=None,
    help="Override tracking.enabled (off: mlflow is not even imported).",
)
@fails_cleanly
def train_command(params_path: Path, model_name: str | None, tracking_on: bool | None) -> None:
    """Train the selected config; resumes from its last checkpoint if interrupted."""
    params = _params(params_path, model_name)  # before importing torch: bad params fail fast
    from .data import load_corpus
    from .plots import save_learning_curve
    from .train import device_description, resolve_device, save_model, set_precision, train

    name, config = params.model, params.config
    corpus = load_corpus(PREPARED_DIR)
    device = resolve_device(params.train.device)
    set_precision(params.train.precision, device)  # fails before a tracking run is opened
    enabled = params.tracking.enabled if tracking_on is None else tracking_on
    tracker = (
        tracking.open_tracker(params.tracking, tracking.run_name(name))
        if enabled
        else tracking.NullTracker()
    )
    checkpoint = CHECKPOINT_DIR / name / "last.pt"
    try:
        tracker.set_tags(tracking.run_tags(name, device.type, device_description(device)))
        tracker.log_params(_run_params(params))
        result = train(name, config, params.train, corpus, checkpoint, on_epoch=tracker.log_epoch)
        train_json = METRICS_DIR / name / "train.json"
        speed_json = TIMINGS_DIR / name / "speed.json"
        history_csv = PLOTS_DIR / name / "history.csv"
        curve_png = PLOTS_DIR / name / "learning_curve.png"
        save_model(MODELS_DIR / name / "model.pt", result.model, name, corpus)
        write_json(
            train_json,
            {
                "config": name,
                "train_perplexity": round(result.train_perplexity, 4),
                "valid_perplexity": round(result.valid_perplexity, 4),
                "epochs": len(result.history),
                "device": device.type,
            },
        )
        write_json(
            speed_json,
            {
                "words_per_sec": round(result.words_per_sec, 1),
                "wall_time_s": round(result.wall_time_s, 2),
                "device": device_description(device),
                "precision": params.train.precision,
                "epochs": [
                    {k: r[k] for k in ("epoch", "words_per_sec", "epoch_time_s")}
                    for r in result.history
                ],
            },
        )
        write_text(history_csv, _history_csv(result.history))
        save_learning_curve(result.history, curve_png, f"PTB {name} config")
        files = [train_json, speed_json, history_csv, curve_png]
        _log_training(tracker, result, files, MODELS_DIR / name / "model.pt")
        tracker.write_run_file(MODELS_DIR / name / RUN_FILE)
    except BaseException:
        tracker.end(failed=True)
        raise
    checkpoint.unlink(missing_ok=True)
    tracker.end()
    click.echo(
        f"{name}: train ppl {result.train_perplexity:.2f}, valid ppl "
        f"{result.valid_perplexity:.2f}, {result.words_per_sec:,.0f} words/s, "
        f"{result.wall_time_s:.1f} s"
    )


def _evaluate_tracker(params: Params, run_file: Path) -> tracking.NullTracker:
    """Reopen the run train opened, in the store train used; none if train tracked none."""
    run = tracking.read_run_file(run_file)
    if not run.get("run_id"):
        return tracking.NullTracker()
    return tracking.open_tracker(params.tracking, "", run_id=run["run_id"], uri=run["tracking_uri"])


@main.command(name="evaluate")
@params_option
@model_option
@fails_cleanly
def evaluate_command(params_path: Path, model_name: str | None) -> None:
    """Test (and valid) perplexity as the tutorial scores it: batch 1, state carried."""
    params = _params(params_path, model_name)  # before importing torch: bad params fail fast
    from .data import load_corpus
    from .train import evaluate_split, load_model, resolve_device, set_precision

    name = params.model
    corpus = load_corpus(PREPARED_DIR)
    device = resolve_device(params.train.device)
    set_precision(params.train.precision, device)
    model = load_model(MODELS_DIR / name / "model.pt", name, params.config, corpus).to(device)
    tracker = _evaluate_tracker(params, MODELS_DIR / name / RUN_FILE)
    batch = params.evaluate.batch_size
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
            },
        )
        tracker.log_metrics(
            {
                "test_perplexity": scores["test"].perplexity,
                "eval_valid_perplexity": scores["valid"].perplexity,
                "eval_words_per_sec": scores["test"].words_per_sec,
                "total_wall_time_s": tracker.elapsed_s(),
            }
        )
        tracker.log_artifacts([eval_json])
    except BaseException:
        tracker.end(failed=True)
        raise
    tracker.end()
    click.echo(
        f"{name}: test ppl {scores['test'].perplexity:.2f}, valid ppl "
        f"{scores['valid'].perplexity:.2f} ({scores['test'].words_per_sec:,.0f} words/s)"
    )


@main.command()
@params_option
@click.option(
    "--source",
    type=click.Choice(["mlflow", "metrics"]),
    default="mlflow",
    show_default=True,
    help="Every run in the MLflow store, or each config's committed results under metrics/.",
)
@click.option("--format", "fmt", type=click.Choice(["table", "markdown", "csv"]), default="table")
@click.option("--output", type=click.Path(path_type=Path), help="Write here instead of stdout.")
@fails_cleanly
def compare(params_path: Path, source: str, fmt: str, output: Path | None) -> None:
    """Runs side by side with the paper's and the tutorial's perplexities (pandas)."""
    from .compare import from_metrics, from_mlflow, render, with_reference

    settings = load_params(params_path).tracking
    runs = (
        from_mlflow(tracking.tracking_uri(settings), settings.experiment)
        if source == "mlflow"
        else from_metrics(METRICS_DIR, TIMINGS_DIR)
    )
    text = render(with_reference(runs), fmt)
    if output:
        write_text(output, text)
    else:
        click.echo(text, nl=False)


if __name__ == "__main__":
    sys.exit(main())
