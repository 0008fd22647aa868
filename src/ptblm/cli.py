"""`ptblm`: one command per pipeline stage, plus tools. DVC calls these through stages/."""

from __future__ import annotations

import csv
import functools
import io
import os
import sys
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from . import tracking
from .config import Params, load_params
from .errors import PtblmError
from .fsutil import write_json, write_text
from .text import RULES

if TYPE_CHECKING:
    from .train import TrainResult

RAW_ARCHIVE = Path("data/raw/simple-examples.tgz")
TEXT_DIR = Path("data/ptb")
PREPARED_DIR = Path("data/prepared")
MODELS_DIR = Path("models")
METRICS_DIR = Path("metrics")
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
@click.option(
    "--verbose",
    "-v",
    is_flag=True,
    help=f"Show MLflow's INFO lines, warnings and download bars (or set {tracking.VERBOSE_ENV}=1).",
)
def main(verbose: bool) -> None:
    """Zaremba et al. (2014) PTB language models: the stages of the DVC pipeline, and tools.

    Run the whole pipeline with `dvc repro`; each command here is one stage. `generate`
    and `score` use a trained model.
    """
    if verbose:
        os.environ[tracking.VERBOSE_ENV] = "1"


@main.command()
@params_option
@click.option("--out", type=click.Path(path_type=Path), default=RAW_ARCHIVE, show_default=True)
@fails_cleanly
def fetch(params_path: Path, out: Path) -> None:
    """Download simple-examples.tgz ($PTBLM_DATA_SOURCE first, then data.sources)."""
    from .fetch import candidate_sources, fetch_archive

    data = load_params(params_path).data
    used = fetch_archive(
        candidate_sources(data.sources),
        out,
        timeout_s=data.timeout_s,
        retries=data.retries,
        backoff_s=data.backoff_s,
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
    """Only what the model learned: timings live in speed.json, so unchanged runs diff clean."""
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
    tracker: tracking.NullTracker, result: TrainResult, out: Path, model_path: Path
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
    # the final train and valid perplexities are the last epoch's (MLflow's latest value)
    tracker.log_metrics(
        {name: getattr(result, field) for field, name in tracking.TRAIN_SUMMARY.items()}
    )
    names = ("train.json", "speed.json", "history.csv", "learning_curve.png")
    tracker.log_artifacts([PREPARED_DIR / "vocab.txt", *(out / n for n in names)])
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
        out = METRICS_DIR / name
        save_model(MODELS_DIR / name / "model.pt", result.model, name, corpus)
        write_json(
            out / "train.json",
            {
                "config": name,
                "train_perplexity": round(result.train_perplexity, 4),
                "valid_perplexity": round(result.valid_perplexity, 4),
                "epochs": len(result.history),
                "device": device.type,
            },
        )
        write_json(
            out / "speed.json",
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
        write_text(out / "history.csv", _history_csv(result.history))
        save_learning_curve(result.history, out / "learning_curve.png", f"PTB {name} config")
        _log_training(tracker, result, out, MODELS_DIR / name / "model.pt")
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
        evaluated = {
            "test_perplexity": scores["test"].perplexity,
            "eval_valid_perplexity": scores["valid"].perplexity,
            "eval_words_per_sec": scores["test"].words_per_sec,
            "total_wall_time_s": tracker.elapsed_s(),
        }
        tracker.log_metrics({tracking.EVAL_METRICS[k]: v for k, v in evaluated.items()})
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
        else from_metrics(METRICS_DIR)
    )
    text = render(with_reference(runs), fmt)
    if output:
        write_text(output, text)
    else:
        click.echo(text, nl=False)


def model_source(command):
    """--model / --model-uri / --device, shared by `generate` and `score`."""
    options = [
        click.option(
            "--model",
            "model_name",
            default=None,
            help="A config trained by the pipeline (models/<config>/model.pt) or a model "
            "file's path [default: params.yaml's model].",
        ),
        click.option(
            "--model-uri",
            default=None,
            help="An MLflow model instead: runs:/<run id>/model, models:/<name>/<version>, "
            "or a model folder (needs mlflow).",
        ),
        click.option(
            "--device",
            type=click.Choice(["cpu", "cuda"]),
            default="cpu",
            show_default=True,
        ),
        params_option,
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _language_model(params_path: Path, model_name: str | None, model_uri: str | None, device):
    """The model `--model`/`--model-uri` name, on `device` (a one-line error if unusable)."""
    import torch

    from .api import load_model

    if device == "cuda" and not torch.cuda.is_available():
        raise click.ClickException("--device cuda: no CUDA device is visible; use --device cpu")
    if model_uri and model_name:
        raise click.UsageError("give --model or --model-uri, not both")
    if model_uri:
        return load_model(model_uri, device)
    if model_name and (model_name.endswith(".pt") or os.sep in model_name):
        return load_model(model_name, device)
    name = model_name or load_params(params_path).model
    return load_model(MODELS_DIR / name / "model.pt", device)


@main.command()
@model_source
@click.option("--prompt", default="", help="Text to continue (normalized as `score` does).")
@click.option("--words", type=int, default=30, show_default=True, help="Tokens to sample.")
@click.option(
    "--temperature",
    type=float,
    default=1.0,
    show_default=True,
    help="Softmax temperature; 0 takes the most likely word every time.",
)
@click.option("--top-k", type=int, default=None, help="Sample among the k likeliest words only.")
@click.option("--seed", type=int, default=0, show_default=True, help="Same seed, same text.")
@click.option("--no-normalize", is_flag=True, help="Use the prompt's words exactly as given.")
@fails_cleanly
def generate(
    params_path: Path,
    model_name: str | None,
    model_uri: str | None,
    device: str,
    prompt: str,
    words: int,
    temperature: float,
    top_k: int | None,
    seed: int,
    no_normalize: bool,
) -> None:
    """Sample text from a trained model, after the prompt; each <eos> prints as a line break.

    Prompt words outside the vocabulary become <unk> (a note on stderr names them).
    """
    from .generate import as_text, generate, in_vocabulary
    from .text import normalize

    lm = _language_model(params_path, model_name, model_uri, device)
    given = prompt.split() if no_normalize else normalize(prompt, set(lm.vocab))
    known, oov = in_vocabulary(given, lm.vocab)
    if oov:
        click.echo(f"note: not in the vocabulary, read as <unk>: {' '.join(oov)}", err=True)
    sampled = generate(lm, known, words, temperature, top_k, seed, device)
    click.echo(as_text(known, sampled), nl=False)


SCORE_HELP = f"""Log-probability and perplexity of sentences, one per line, from INPUT_FILE or
stdin (-).

Per sentence: words, OOV words (scored as <unk>), total log-probability (natural log) and
perplexity; then a total line. Each sentence is scored on its own: from the zero state,
after an <eos> (every corpus sentence follows one), predicting every word and the closing
<eos>. Words/s go to stderr.

Text is normalized the way PTB was prepared, so typed text reads as the model's training
text did: {RULES}. --no-normalize scores the words as given.

The whole input is read and checked first: an empty line, binary or non-UTF-8 input stops
it with that line's number, before anything is printed.
"""


@main.command(name="score", help=SCORE_HELP)
@model_source
@click.argument("input_file", type=click.Path(path_type=Path, dir_okay=False), default="-")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "jsonl"]), default="table")
@click.option(
    "--carry-state",
    is_flag=True,
    help="Score the lines as one stream, state carried, exactly as `ptblm evaluate` scores "
    "a split (its first token is context): prints the total only.",
)
@click.option("--no-normalize", is_flag=True, help="Score the words exactly as given.")
@fails_cleanly
def score_command(
    params_path: Path,
    model_name: str | None,
    model_uri: str | None,
    device: str,
    input_file: Path,
    fmt: str,
    carry_state: bool,
    no_normalize: bool,
) -> None:
    """Log-probability and perplexity of sentences (see SCORE_HELP)."""
    from .score import parse, read_lines, render, score

    source = "stdin" if str(input_file) == "-" else str(input_file)
    try:
        data = sys.stdin.buffer.read() if source == "stdin" else input_file.read_bytes()
    except OSError as exc:
        raise click.ClickException(f"{source}: cannot read ({exc.strerror})") from None
    lines = read_lines(data, source)
    lm = _language_model(params_path, model_name, model_uri, device)
    sentences = parse(lines, lm.vocab, normalized=not no_normalize)
    rows, total, rate = score(lm, sentences, device, carry_state=carry_state)
    click.echo(render(rows, total, fmt), nl=False)
    click.echo(f"{total.words + len(sentences):,} tokens scored, {rate:,.0f} words/s", err=True)


if __name__ == "__main__":
    sys.exit(main())
