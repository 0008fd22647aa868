"""`ptblm checkpoints`: the training checkpoints on disk, and removing the stale ones.

A run's checkpoint is checkpoints/<config>/<identity hash>.pt at the project root; a
finished run removes its own. The others belong to runs that were interrupted (resumable
when rerun with the same result settings) or to code that has since changed (stale).
"""

from __future__ import annotations

import time

import click

from .common import fails_cleanly


@click.command("checkpoints")
@click.option(
    "--remove-stale",
    is_flag=True,
    help="Delete the checkpoints no rerun of this code can resume (other training code or "
    "format); resumable ones are kept.",
)
@fails_cleanly
def checkpoints_command(remove_stale: bool) -> None:
    """List the training checkpoints under <project root>/checkpoints/.

    Each line: config, epochs done, seed, size, age, and whether a rerun can resume it.
    Delete one by hand (rm) to make its run start fresh; --remove-stale deletes those no
    rerun can resume.
    """
    from ..checkpoint import checkpoints
    from ..codedeps import training_code_version
    from ..workspace import project_root

    root = project_root()
    found = list(checkpoints(root, training_code_version()))
    if not found:
        click.echo(f"no checkpoints under {root / 'checkpoints'}")
        return
    total = 0
    for info in found:
        state = f"stale: {info.stale}" if info.stale else "resumable"
        removed = remove_stale and info.stale
        if removed:
            info.path.unlink(missing_ok=True)
        else:
            total += info.size_bytes
        click.echo(
            f"{info.path.relative_to(root)}  {info.config}  epoch {info.epoch}/{info.epochs}  "
            f"seed {info.seed}  {info.size_bytes / 1e6:,.1f} MB  {_age(info.modified)} old  "
            f"{state}{'  (removed)' if removed else ''}"
        )
    click.echo(f"{total / 1e6:,.1f} MB in checkpoints kept")


def _age(modified: float) -> str:
    hours = (time.time() - modified) / 3600
    return f"{hours:.1f} h" if hours < 48 else f"{hours / 24:.0f} d"
