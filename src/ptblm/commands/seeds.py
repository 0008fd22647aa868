"""`ptblm seeds`: n, mean and standard deviation of one config's runs with several seeds."""

from __future__ import annotations

from pathlib import Path

import click

from .common import METRICS_DIR, fails_cleanly


@click.command("seeds")
@click.argument(
    "folders", nargs=-1, required=True, type=click.Path(path_type=Path, file_okay=False)
)
@click.option("--config", "config_name", required=True, help="The config the runs trained.")
@click.option(
    "--output",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Where to write the summary.  [default: metrics/<config>/seeds.json]",
)
@fails_cleanly
def seeds_command(folders: tuple[Path, ...], config_name: str, output: Path | None) -> None:
    """Summarize runs of one config that differ only in train.seed.

    Each FOLDER is named <config>-seed<N> and holds that run's train.json and eval.json
    (as metrics/<config>/ had them). Writes n, every seed's perplexities and each split's
    mean and sample standard deviation, and prints them in one line. `ptblm compare`
    groups seeded runs of the MLflow store by itself; this is for runs kept as files.
    """
    from ..fsutil import write_json
    from ..seeds import from_folders, line

    summary = from_folders(config_name, list(folders))
    write_json(output or METRICS_DIR / config_name / "seeds.json", summary)
    click.echo(line(summary))
