"""`ptblm train` (DVC stage train): train the selected config, log it, write its results."""

from __future__ import annotations

import csv
import io
import os
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from .. import tracking
from ..config import Params, load_params, operational, training_result
from ..errors import TrainingError
from ..fsutil import md5_of, write_json, write_text
from ..model_logging import log_model
from ..workspace import project_root
from .common import (
    METRICS_DIR,
    MODELS_DIR,
    PLOTS_DIR,
    PREPARED_DIR,
    RUN_FILE,
    TIMINGS_DIR,
    fails_cleanly,
    model_option,
    params_option,
    stops_cleanly,
    tracking_option,
)

if TYPE_CHECKING:
    import torch

    from ..distributed import World
    from ..train import TrainResult


def history_csv(history: list[dict]) -> str:
    """Only what the model learned: timings live in timings/, so unchanged runs diff clean."""
    columns = ["epoch", "lr", "train_perplexity", "valid_perplexity"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    return buffer.getvalue()


def run_params(params: Params) -> dict[str, Any]:
    """What MLflow records as the run's params: the keys that change the trained model
    (config.SETTINGS), so a rerun with another thread count or device reopens the run."""
    return training_result(params.model, params.config, params.train)


def run_settings_tags(params: Params, resumed: bool) -> dict[str, Any]:
    """The operational settings as tags: a resumed segment records its own under
    `resumed_with.`, beside the first segment's."""
    prefix = "resumed_with." if resumed else ""
    return {f"{prefix}{key}": value for key, value in operational(params.train).items()}


def _log_training(
    tracker: tracking.NullTracker, result: TrainResult, files: list[Path], model_path: Path
) -> None:
    """End-of-training metrics, the epochs a resumed run did before this process if they are
    not in this run yet (so its curves are whole), the files worth comparing, and the model."""
    tracker.log_missing_epochs(result.history[: result.resumed_from_epoch])
    tracker.set_tags(
        {
            "resumed": bool(result.resumed_from_epoch),
            "resumed_from_epoch": result.resumed_from_epoch,
        }
    )
    # the final train and valid perplexities are the last epoch's (MLflow's latest value)
    tracker.log_metrics(
        {name: getattr(result, field) for field, name in tracking.TRAIN_SUMMARY.items()}
    )
    tracker.log_artifacts([PREPARED_DIR / "vocab.txt", *files])
    log_model(tracker, model_path, PREPARED_DIR / "vocab.txt")


def _write_results(
    params: Params, result: TrainResult, device, processes: int, model_md5: str
) -> list[Path]:
    """metrics/<config>/train.json, timings/<config>/speed.json, plots/<config>/{history.csv,
    learning_curve.png}; returns their paths."""
    from ..device import device_description
    from ..plots import save_learning_curve

    name = params.model
    train_json = METRICS_DIR / name / "train.json"
    speed_json = TIMINGS_DIR / name / "speed.json"
    history = PLOTS_DIR / name / "history.csv"
    curve = PLOTS_DIR / name / "learning_curve.png"
    write_json(
        train_json,
        {
            "config": name,
            "train_perplexity": round(result.train_perplexity, 4),
            "valid_perplexity": round(result.valid_perplexity, 4),
            "epochs": len(result.history),
            "device": device.type,
            "model_md5": model_md5,  # eval.json names the model it scored the same way
        },
    )
    write_json(
        speed_json,
        {
            "words_per_sec": round(result.words_per_sec, 1),
            "wall_time_s": round(result.wall_time_s, 2),
            "device": device_description(device),
            "processes": processes,
            "precision": params.train.precision,
            "epochs": [
                {k: r[k] for k in ("epoch", "words_per_sec", "epoch_time_s")}
                for r in result.history
            ],
        },
    )
    write_text(history, history_csv(result.history))
    save_learning_curve(result.history, curve, f"PTB {name} config")
    return [train_json, speed_json, history, curve]


def _interrupted_note() -> str | None:
    """After SIGTERM or Ctrl-C: how to go on, and how to get back what DVC deleted first."""
    if int(os.environ.get("RANK", "0")):  # a torchrun rank other than 0: rank 0 says it
        return None
    return (
        "the MLflow run is marked KILLED and the checkpoint keeps the finished epochs: run "
        "it again (dvc repro, dvc exp run) to resume and finish it. DVC deleted this stage's "
        "outputs before it ran; the committed ones come back with `git checkout metrics "
        "plots timings` and `dvc checkout`"
    )


@click.command(name="train")
@params_option
@model_option
@tracking_option
@fails_cleanly
@stops_cleanly(_interrupted_note)
def train_command(params_path: Path, model_name: str | None, tracking_on: bool | None) -> None:
    """Train the selected config; resumes from its last checkpoint if interrupted.

    A checkpoint is resumed only by the same config, seed, precision, data, code and number
    of processes; the rerun logs into the same MLflow run. Resuming is exact on CPU; on CUDA
    it is equivalent in distribution (cuDNN's dropout RNG is not in the checkpoint).

    On CUDA it takes the first GPU no other ptblm process holds. With train.nproc_per_node
    > 1 it runs itself under torchrun (on CUDA, on that many free GPUs); under torchrun
    (`torchrun -m ptblm train`) it is one rank of a DistributedDataParallel run, and rank 0
    alone writes files and MLflow data.
    """
    params = load_params(params_path, model_name)  # before torch: bad params fail fast
    from ..distributed import world_from_env

    world = world_from_env()
    if params.train.nproc_per_node > 1 and not world.distributed:
        _launch(params, params_path, model_name, tracking_on)
        return

    from .. import distributed
    from ..device import training_device

    device = training_device(
        params.train.device,
        params.train.gpu_wait_s,
        world.local_rank if world.distributed else None,
    )
    distributed.start(world, device)
    try:
        _train(params, world, device, tracking_on)
    finally:
        distributed.stop()


def _launch(
    params: Params, params_path: Path, model_name: str | None, tracking_on: bool | None
) -> None:
    """This command again as train.nproc_per_node ranks under torchrun (on CUDA, on as many
    GPUs, locked here for as long as the ranks run)."""
    from ..device import gpus_for_ranks
    from ..launch import run_under_torchrun

    args = ["train", "--params", str(params_path)]
    args += ["--model", model_name] if model_name else []
    args += [] if tracking_on is None else ["--tracking" if tracking_on else "--no-tracking"]
    settings = params.train
    gpus = gpus_for_ranks(settings.device, settings.nproc_per_node, settings.gpu_wait_s)
    status = run_under_torchrun(settings.nproc_per_node, settings.max_restarts, args, gpus)
    if status:
        raise TrainingError(f"torchrun exited with status {status}; see the ranks' errors above")


def _train(params: Params, world: World, device: torch.device, tracking_on: bool | None) -> None:
    """One process's training: in a distributed run, rank 0 alone tracks and writes."""
    from ..checkpoint import checkpoint_path, checkpoint_run_id, run_identity
    from ..codedeps import training_code_version
    from ..data import load_corpus
    from ..device import device_description, set_precision, use_threads
    from ..modelfile import save_model
    from ..train import train

    name, config = params.model, params.config
    corpus = load_corpus(PREPARED_DIR)
    use_threads(params.train.num_threads)  # before the run tags describe the device
    set_precision(params.train.precision, device)  # fails before a tracking run is opened
    code = training_code_version()
    identity = run_identity(name, config, corpus, params.train, code, world.size)
    checkpoint = checkpoint_path(project_root(), identity)
    enabled = params.tracking.enabled if tracking_on is None else tracking_on
    if world.is_main:
        _say_start(params, device, checkpoint, world.size)
    if enabled and world.is_main:
        previous = checkpoint_run_id(checkpoint, identity)
        tracker = tracking.open_tracker(params.tracking, tracking.run_name(name), previous)
    else:
        tracker = tracking.NullTracker()
    if url := tracker.ui_url():
        local = not url.startswith(tracker.uri or "")
        where = f"{url} (after `mlflow ui` at the project root)" if local else url
        click.echo(f"MLflow run {tracker.run_id}: {where}", err=True)
    try:
        tags = tracking.run_tags(name, device.type, device_description(device))
        settings = run_settings_tags(params, resumed=tracker.reopened)
        tracker.set_tags({**tags, **settings, "processes": world.size})
        tracker.log_params(run_params(params))
        result = train(
            name,
            config,
            params.train,
            corpus,
            checkpoint,
            on_epoch=_epoch_logger(tracker),
            code_version=code,
            tracking_run_id=tracker.run_id,
            device=device,
            world=world,
        )
        if not world.is_main:
            return
        model_file = MODELS_DIR / name / "model.pt"
        save_model(model_file, result.model, name, corpus)
        files = _write_results(params, result, device, world.size, md5_of(model_file))
        _log_training(tracker, result, files, model_file)
        tracker.write_run_file(MODELS_DIR / name / RUN_FILE)
    except KeyboardInterrupt:  # SIGINT, or SIGTERM (stops_cleanly): a rerun resumes it
        _end_interrupted(tracker)
        raise
    except BaseException:
        tracker.end(failed=True)
        raise
    checkpoint.unlink(missing_ok=True)
    tracker.end()
    click.echo(
        f"{name}: train ppl {result.train_perplexity:.2f}, valid ppl "
        f"{result.valid_perplexity:.2f}, {result.words_per_sec:,.0f} words/s, "
        f"{result.wall_time_s:.1f} s"
    )
    if note := _others_note(checkpoint):
        click.echo(f"note: {note}")


def _end_interrupted(tracker: tracking.NullTracker) -> None:
    """KILLED, not RUNNING forever; a store that cannot take it (the signal landed in the
    middle of a write) is a warning, and the interruption goes on."""
    try:
        tracker.end(killed=True)
    except Exception as exc:
        tracking.warn(f"the MLflow run {tracker.run_id} could not be marked KILLED ({exc})")


def _say_start(params: Params, device, checkpoint: Path, processes: int) -> None:
    """One line before the first epoch: what trains where, and where its checkpoint is."""
    from ..device import device_description

    config = params.config
    where = device_description(device) + (f" x {processes} processes" if processes > 1 else "")
    click.echo(
        f"train {params.model}: {config.max_max_epoch} epochs, seed {params.train.seed}, "
        f"{params.train.precision} on {where}; checkpoint {checkpoint}",
        err=True,
    )
    if note := _others_note(checkpoint):
        click.echo(f"note: {note}", err=True)


def _others_note(checkpoint: Path) -> str | None:
    """The other checkpoints of this config, so they never pile up unseen."""
    from ..checkpoint import others

    found = others(checkpoint)
    if not found:
        return None
    size = sum(p.stat().st_size for p in found) / 1e6
    return (
        f"{len(found)} other checkpoint(s) of {checkpoint.parent.name} in {checkpoint.parent} "
        f"({size:,.1f} MB), kept for the runs they belong to: `ptblm checkpoints` lists them"
    )


# Tests only: kill -9 this process after the first epoch it checkpoints, before that epoch's
# metrics reach MLflow: the one gap a kill can leave between an epoch's two records.
KILL_AFTER_CHECKPOINT_ENV = "PTBLM_TEST_KILL_AFTER_CHECKPOINT"


def _epoch_logger(tracker: tracking.NullTracker):
    kill = os.environ.get(KILL_AFTER_CHECKPOINT_ENV) == "1"

    def log(record: dict[str, Any]) -> None:
        if kill:
            os.kill(os.getpid(), signal.SIGKILL)
        tracker.log_epoch(record)

    return log
