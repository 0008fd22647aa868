"""`ptblm`: one command per pipeline stage, plus tools. DVC calls them through stages/."""

from __future__ import annotations

import sys

import click

from .commands.check import check_command
from .commands.compare import compare
from .commands.evaluate import evaluate_command
from .commands.extract import extract
from .commands.fetch import fetch
from .commands.prepare import prepare
from .commands.train import train_command


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="ptblm")
def main() -> None:
    """Zaremba et al. (2014) PTB language models: the stages of the DVC pipeline, and tools.

    Run the whole pipeline with `dvc repro`; each stage command here is one stage.
    """


for command in (
    fetch,
    extract,
    prepare,
    check_command,
    train_command,
    evaluate_command,
    compare,
):
    main.add_command(command)


if __name__ == "__main__":
    sys.exit(main())
