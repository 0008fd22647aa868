"""The main training loop, `train()`: the tutorial's epochs, with checkpoints that resume exactly.

Each step is `reference.reference_step`'s update (loss, clip, step, as pytorch/examples'
main.py writes it), done faster by `step.TrainStep`. Imports torch only; tracking comes in
through the `on_epoch` callback, so this runs on a machine that has nothing but torch.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from .checkpoint import TrainState, load_checkpoint, run_identity, save_checkpoint
from .config import ModelConfig, TrainParams, require_batch_splits
from .data import Corpus, batchify, require_vocab_fits, require_windows
from .device import keep_freed_memory, resolve_device, set_precision, use_threads
from .distributed import (
    SINGLE,
    World,
    broadcast,
    data_parallel,
    epoch_seed,
    mean_log_perplexity,
    rank_rows,
    share_weights,
    slowest,
    summed,
)
from .epoch import EpochResult, score_epoch, train_epoch
from .model import PTBModel
from .progress import say
from .schedule import learning_rate
from .step import TrainStep


@dataclass
class TrainResult:
    """What `train` hands back: the trained model, its epochs' records and the summary."""

    model: PTBModel
    history: list[dict[str, float]]
    train_perplexity: float
    valid_perplexity: float
    wall_time_s: float
    words_per_sec: float
    resumed_from_epoch: int


def resume_note(config_name: str, epoch: int, path: Path, device: torch.device, config) -> str:
    """Where a resumed run is the uninterrupted one, and where only a run like it."""
    note = f"resuming {config_name} after epoch {epoch} from {path}"
    if device.type == "cuda" and config.keep_prob < 1:
        note += (
            " (on CUDA the resumed run is equivalent in distribution, not bit-identical: "
            "cuDNN's dropout RNG is not in the checkpoint; on CPU resuming is exact)"
        )
    return note


def train(
    config_name: str,
    config: ModelConfig,
    settings: TrainParams,
    corpus: Corpus,
    checkpoint_path: Path,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    *,
    code_version: str = "",
    tracking_run_id: str | None = None,
    device: torch.device | None = None,
    world: World = SINGLE,
) -> TrainResult:
    """Train `config` for max_max_epoch epochs, resuming from `checkpoint_path` if it fits.

    The checkpoint records `tracking_run_id`, so a rerun after a kill logs into the same run.
    In a distributed run (`world`, see `distributed`) every rank trains its rows of the
    batch; rank 0 alone reads and writes the checkpoint and hands its state to the others.
    """
    require_vocab_fits(config_name, config.vocab_size, len(corpus.vocab))
    require_batch_splits(config_name, config.batch_size, world.size)
    for split in ("train", "valid"):
        require_windows(split, corpus.splits[split].numel(), config.batch_size, config.num_steps)
    use_threads(settings.num_threads)
    keep_freed_memory()
    device = device or resolve_device(settings.device)
    torch.manual_seed(settings.seed)
    set_precision(settings.precision, device)
    model = PTBModel(config).to(device)
    parallel = data_parallel(model, world, device) if world.distributed else None
    step = TrainStep(
        model, settings.precision, settings.cuda_graphs, parallel, config.batch_size // world.size
    )
    identity = run_identity(config_name, config, corpus, settings, code_version, world.size)
    state = TrainState()
    if world.is_main:
        state = load_checkpoint(checkpoint_path, identity, model, step.optimizer) or state
    state = broadcast(state, world)
    share_weights(model, world)  # rank 0's, resumed or not
    resumed_from = state.epoch
    if resumed_from and world.is_main:
        say(resume_note(config_name, resumed_from, checkpoint_path, device, config))

    train_data = rank_rows(batchify(corpus.splits["train"], config.batch_size), world).to(device)
    valid_data = rank_rows(batchify(corpus.splits["valid"], config.batch_size), world).to(device)
    epochs = tqdm(
        range(state.epoch + 1, config.max_max_epoch + 1),
        desc=f"train {config_name}",
        unit="epoch",
        initial=state.epoch,
        total=config.max_max_epoch,
        disable=None if world.is_main else True,
    )
    for epoch in epochs:
        if world.distributed:
            torch.manual_seed(epoch_seed(settings.seed, epoch, world))
        lr = learning_rate(config, epoch, state.history)
        step.set_lr(lr)
        trained = train_epoch(
            model,
            train_data,
            config.num_steps,
            step,
            desc=f"epoch {epoch} train",
            epoch=epoch,
            quiet=not world.is_main,
        )
        valid = score_epoch(
            model,
            valid_data,
            config.num_steps,
            settings.precision,
            desc=f"epoch {epoch} valid",
            epoch=epoch,
            quiet=not world.is_main,
        )
        trained, valid = over_ranks(trained, world), over_ranks(valid, world)
        record = {
            "epoch": epoch,
            "lr": lr,
            "train_perplexity": trained.perplexity,
            "valid_perplexity": valid.perplexity,
            "words_per_sec": trained.words_per_sec,
            "epoch_time_s": trained.seconds + valid.seconds,
        }
        state.history.append(record)
        state.epoch = epoch
        if not world.is_main:
            continue
        save_checkpoint(checkpoint_path, identity, model, step.optimizer, state, tracking_run_id)
        say(
            f"epoch {epoch:3d}  lr {lr:.4f}  train ppl {trained.perplexity:8.2f}  "
            f"valid ppl {valid.perplexity:8.2f}  {trained.words_per_sec:9.0f} words/s  "
            f"{record['epoch_time_s']:6.1f} s"
        )
        if on_epoch is not None:
            on_epoch(record)

    last = state.history[-1]
    return TrainResult(
        model=model,
        history=state.history,
        train_perplexity=last["train_perplexity"],
        valid_perplexity=last["valid_perplexity"],
        wall_time_s=sum(r["epoch_time_s"] for r in state.history),
        # every epoch trains the same words, so the overall rate is the harmonic mean
        words_per_sec=statistics.harmonic_mean([r["words_per_sec"] for r in state.history]),
        resumed_from_epoch=resumed_from,
    )


def over_ranks(result: EpochResult, world: World) -> EpochResult:
    """An epoch over every rank's rows: the whole batch's perplexity, words and seconds."""
    return EpochResult(
        mean_log_perplexity(result.perplexity, world),
        int(summed(result.words, world)),
        slowest(result.seconds, world),
    )
