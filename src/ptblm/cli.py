"""`ptblm`: one command per pipeline stage, plus tools. DVC calls them through stages/."""

from __future__ import annotations

import os
import sys

import click

from .commands.adapt import adapt_command
from .commands.check import check_command
from .commands.checkpoints import checkpoints_command
from .commands.compare import compare
from .commands.evaluate import evaluate_command
from .commands.extract import extract
from .commands.fetch import fetch
from .commands.generate import generate
from .commands.prepare import prepare
from .commands.score import score_command
from .commands.seeds import seeds_command
from .commands.train import train_command
from .tracking import VERBOSE_ENV


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="ptblm")
@click.option(
    "--verbose",
    "-v",
    is_flag=True,
    help=f"Show MLflow's INFO lines, warnings and download bars (or set {VERBOSE_ENV}=1).",
)
def main(verbose: bool) -> None:
    """Zaremba et al. (2014) PTB language models: the stages of the DVC pipeline, and tools.

    Run the whole pipeline with `dvc repro`; each stage command here is one stage. `generate`
    and `score` use a trained model.
    """
    if verbose:
        os.environ[VERBOSE_ENV] = "1"


for command in (
    fetch,
    extract,
    prepare,
    check_command,
    train_command,
    evaluate_command,
    adapt_command,
    compare,
    generate,
    score_command,
    seeds_command,
    checkpoints_command,
):
    main.add_command(command)


if __name__ == "__main__":
    sys.exit(main())
