"""`ptblm compare`: runs side by side with the published numbers."""

from __future__ import annotations

from pathlib import Path

import click

from .. import tracking
from ..config import load_params
from ..fsutil import write_text
from .common import METRICS_DIR, TIMINGS_DIR, fails_cleanly, params_option


@click.command()
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
@click.option(
    "--plot",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Also draw each config's test perplexity beside the published ones to this PNG.",
)
@fails_cleanly
def compare(
    params_path: Path, source: str, fmt: str, output: Path | None, plot: Path | None
) -> None:
    """Runs side by side with the published perplexities (the paper's, the tutorial's and,
    for the variants, the recipes they follow), with the params that differ between runs
    and the mean and sd of runs that differ only in their seed."""
    from ..compare import from_metrics, from_mlflow, render, with_reference

    settings = load_params(params_path).tracking
    runs = (
        from_mlflow(tracking.tracking_uri(settings), settings.experiment)
        if source == "mlflow"
        else from_metrics(METRICS_DIR, TIMINGS_DIR)
    )
    table = with_reference(runs)
    if plot:
        from ..comparison_plot import save_comparison

        save_comparison(table, plot)
    text = render(table, fmt)
    if output:
        write_text(output, text)
    else:
        click.echo(text, nl=False)
