"""`ptblm prepare` (DVC stage prepare)."""

from __future__ import annotations

from pathlib import Path

import click

from ..fsutil import write_json
from .common import METRICS_DIR, PREPARED_DIR, TEXT_DIR, fails_cleanly


@click.command()
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
    from ..data import prepare as prepare_corpus

    stats = prepare_corpus(text_dir, out)
    write_json(metrics, stats)
    tokens = ", ".join(f"{k} {v:,}" for k, v in stats["tokens"].items())
    click.echo(f"vocabulary {stats['vocab_size']:,} words; tokens: {tokens}")
