"""`ptblm extract` (DVC stage extract)."""

from __future__ import annotations

from pathlib import Path

import click

from .common import RAW_ARCHIVE, TEXT_DIR, fails_cleanly


@click.command()
@click.option("--archive", type=click.Path(path_type=Path), default=RAW_ARCHIVE, show_default=True)
@click.option("--out", type=click.Path(path_type=Path), default=TEXT_DIR, show_default=True)
@fails_cleanly
def extract(archive: Path, out: Path) -> None:
    """Extract and verify (MD5) ptb.{train,valid,test}.txt, refusing unsafe archives."""
    from ..archive import extract_ptb

    for name, digest in extract_ptb(archive, out).items():
        click.echo(f"{out / name}  md5 {digest}  ok")
