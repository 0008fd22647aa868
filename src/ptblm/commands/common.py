"""What every command shares: the project's paths, the --params/--model options, one-line errors."""

from __future__ import annotations

import functools
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import click

from ..errors import PtblmError

RAW_ARCHIVE = Path("data/raw/simple-examples.tgz")
TEXT_DIR = Path("data/ptb")
PREPARED_DIR = Path("data/prepared")
MODELS_DIR = Path("models")
# Per config: metrics/<config>/ only DVC metrics, plots/<config>/ only plot data, timings
# apart (dvc.yaml lists the first two folders whole, so new configs list themselves).
METRICS_DIR = Path("metrics")
PLOTS_DIR = Path("plots")
TIMINGS_DIR = Path("timings")
TUNING_DIR = Path("tuning")  # per config: the adapt stage's grids, valid perplexity per point
CHECKPOINT_DIR = Path("checkpoints")
GRADIENT_RMS = "gradient_rms.pt"  # models/<config>/: dynamic evaluation's training statistics
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
    help="Config to use instead of params.yaml's `model` (small, medium, large, test, ...).",
)

tracking_option = click.option(
    "--tracking/--no-tracking",
    "tracking_on",
    default=None,
    help="Override tracking.enabled (off: mlflow is not even imported).",
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


class Interrupted(KeyboardInterrupt):
    """SIGTERM, raised wherever the process is, as Ctrl-C raises KeyboardInterrupt: the same
    cleanup runs for both (the MLflow run is ended KILLED, not left RUNNING)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_interrupted(signum: int, frame) -> None:
    raise Interrupted(signum)


def stops_cleanly(note: Callable[[], str | None]):
    """SIGTERM and SIGINT (Ctrl-C) end the command as an exception would (its `finally` and
    `except BaseException` blocks run), then with one line on stderr naming the signal and
    `note()`'s advice (no line where `note()` is None: a rank other than 0), and exit status
    128 + the signal's number, as a shell reports a job a signal ended."""

    def decorate(command):
        @functools.wraps(command)
        def wrapper(*args, **kwargs):
            previous = signal.signal(signal.SIGTERM, _raise_interrupted)
            try:
                return command(*args, **kwargs)
            except KeyboardInterrupt as exc:
                signum = getattr(exc, "signum", signal.SIGINT)
                advice = note()
                if advice is not None:
                    name = f"ptblm {command.__name__.removesuffix('_command')}"
                    click.echo(
                        f"{name}: interrupted by {signal.Signals(signum).name}; {advice}",
                        err=True,
                    )
                sys.exit(128 + signum)
            finally:
                signal.signal(signal.SIGTERM, previous)

        return wrapper

    return decorate
