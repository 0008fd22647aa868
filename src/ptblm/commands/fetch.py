"""`ptblm fetch` (DVC stage fetch)."""

from __future__ import annotations

from pathlib import Path

import click

from ..config import load_params
from .common import RAW_ARCHIVE, fails_cleanly, params_option


@click.command()
@params_option
@click.option("--out", type=click.Path(path_type=Path), default=RAW_ARCHIVE, show_default=True)
@fails_cleanly
def fetch(params_path: Path, out: Path) -> None:
    """Download simple-examples.tgz ($PTBLM_DATA_SOURCE, data.sources, data.file_sources)."""
    from ..fetch import candidate_sources, fetch_archive

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
