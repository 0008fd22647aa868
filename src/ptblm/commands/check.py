"""`ptblm check` (DVC stage check, at the head of training): everything that can be known
wrong before any work, checked in a second.

DVC deletes a stage's outputs before running it, so a typo caught inside `train` would
already have cost the last results (model, metrics, curves). This stage runs first and
owns nothing the user made: a bad param, a config the prepared data cannot feed, or a
device or precision this machine lacks stops the pipeline here, with one line.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..config import load_params, training_result
from ..errors import PtblmError
from ..fsutil import write_json
from .common import PREPARED_DIR, fails_cleanly, model_option, params_option

CHECKED_DIR = Path("data/checked")


@click.command(name="check")
@params_option
@model_option
@fails_cleanly
def check_command(params_path: Path, model_name: str | None) -> None:
    """Check params, data and machine for the selected config; write data/checked/<config>.json.

    The file holds what the trained model depends on (the result keys of config.SETTINGS),
    so train reruns when one of them changes, and not when only an operational setting
    (threads, device, waits) or evaluate's do, though this stage checks those too.

    On a failure, the models DVC removed from the workspace when `model` changed (the ones
    this workspace's dvc.lock records) are put back from the DVC cache.
    """
    try:
        _check(params_path, model_name)
    except PtblmError:
        _restore_after_failure(params_path)
        raise


def _restore_after_failure(params_path: Path) -> None:
    """Undo what DVC's checkout of the failed selection removed, and say what stays changed."""
    import os

    from ..whereabouts import read_selection, remove_empty_model_folder, restore_removed

    root = Path.cwd()
    for path in restore_removed(root):
        click.echo(
            f"note: restored {path.relative_to(root)} from the DVC cache (DVC removed it "
            "from the workspace when `model` changed)",
            err=True,
        )
    _, selected = read_selection(params_path)
    if selected:
        remove_empty_model_folder(root, selected)
    if os.environ.get("DVC_EXP_NAME") or os.environ.get("DVC_EXP_BASELINE_REV"):
        click.echo(
            f"note: {params_path} keeps the values `dvc exp run -S` set (DVC does not undo "
            "them when a run fails); `git diff params.yaml` shows them",
            err=True,
        )


def _check(params_path: Path, model_name: str | None) -> None:
    params = load_params(params_path, model_name)
    # torch (data.py and device.py import it): only once the params are good
    from ..data import DataError, require_rows, require_vocab_fits, require_windows
    from ..device import require_gpus, resolve_device, set_precision

    name, config = params.model, params.config
    meta_path = PREPARED_DIR / "meta.json"
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        raise DataError(f"{meta_path}: missing or unreadable; run the prepare stage") from None
    tokens = meta["tokens"]
    require_vocab_fits(name, config.vocab_size, meta["vocab_size"])
    for split in ("train", "valid"):
        require_windows(split, tokens[split], config.batch_size, config.num_steps)
    for split in ("test", "valid"):
        require_rows(split, tokens[split], params.evaluate.batch_size)
    device = resolve_device(params.train.device)
    set_precision(params.train.precision, device)
    require_gpus(device, params.train.nproc_per_node)
    write_json(
        CHECKED_DIR / f"{name}.json",
        {"model": name, **training_result(name, config, params.train)},
    )
    click.echo(f"{name}: params, data and machine fit")
