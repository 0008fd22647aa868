"""Training: the tutorial's run_epoch / main loop, with checkpoints that resume exactly.

Imports torch only; tracking comes in through the `on_epoch` callback, so this
runs on a machine that has nothing but torch.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from .checkpoint import TrainState, load_checkpoint, run_identity, save_checkpoint
from .config import ModelConfig, TrainParams
from .data import Corpus, batchify, require_vocab_fits, require_windows
from .device import keep_freed_memory, resolve_device, set_precision
from .epoch import run_epoch
from .errors import TrainingError
from .fsutil import atomic_path
from .model import PTBModel
from .step import TrainStep, learning_rate

MODEL_FORMAT = 2


# --- checkpoints ------------------------------------------------------------------------


def save_model(path: Path, model: PTBModel, config_name: str, corpus: Corpus) -> None:
    payload = {
        "format": MODEL_FORMAT,
        "config_name": config_name,
        "config": asdict(model.config),
        "vocab_fingerprint": corpus.fingerprint,
        "vocab": corpus.vocab,  # self-contained: ptblm.load_model needs no data/prepared
        "state_dict": model.state_dict(),
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_model(path: Path, config_name: str, config: ModelConfig, corpus: Corpus) -> PTBModel:
    """Load a trained model, refusing one made for another config or vocabulary."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise TrainingError(f"{path}: no trained model; run the train stage first") from None
    except Exception as exc:
        raise TrainingError(f"{path}: not a ptb-lm model file ({exc}); train again") from None
    if payload.get("format") != MODEL_FORMAT:
        raise TrainingError(f"{path}: unknown model format; train again")
    if payload["vocab_fingerprint"] != corpus.fingerprint:
        raise TrainingError(
            f"{path}: trained on another vocabulary than data/prepared; "
            "re-run prepare and train together (dvc repro)"
        )
    differs = _config_differences(payload["config"], config)
    if payload["config_name"] != config_name:
        differs.insert(0, f"config {payload['config_name']!r} (selected: {config_name!r})")
    if differs:
        raise TrainingError(
            f"{path}: trained with another config than the selected {config_name!r}: "
            f"{', '.join(differs)}; train this config first (dvc repro)"
        )
    model = PTBModel(config)
    model.load_state_dict(payload["state_dict"])
    return model


def _config_differences(saved: dict, config: ModelConfig) -> list[str]:
    """`key=saved (selected: value)` for each hyperparameter a model file differs in. Keys
    the file lacks (written before they existed) count as their defaults."""
    defaults = {f.name: f.default for f in fields(ModelConfig) if f.default is not MISSING}
    saved = {**defaults, **saved}
    return [
        f"{key}={saved.get(key)!r} (selected: {value!r})"
        for key, value in asdict(config).items()
        if saved.get(key) != value
    ]


# --- the main loop ----------------------------------------------------------------------


@dataclass
class TrainResult:
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
) -> TrainResult:
    """Train `config` for max_max_epoch epochs, resuming from `checkpoint_path` if it fits.

    The checkpoint records `tracking_run_id`, so a rerun after a kill logs into the same run.
    """
    require_vocab_fits(config_name, config.vocab_size, len(corpus.vocab))
    for split in ("train", "valid"):
        require_windows(split, corpus.splits[split].numel(), config.batch_size, config.num_steps)
    if settings.num_threads:
        torch.set_num_threads(settings.num_threads)
    keep_freed_memory()
    device = resolve_device(settings.device)
    torch.manual_seed(settings.seed)
    set_precision(settings.precision, device)
    model = PTBModel(config).to(device)
    step = TrainStep(model, settings.precision, settings.cuda_graphs)
    optimizer = step.optimizer
    identity = run_identity(config_name, config, corpus, settings, code_version)
    state = load_checkpoint(checkpoint_path, identity, model, optimizer) or TrainState()
    resumed_from = state.epoch
    if resumed_from:
        tqdm.write(resume_note(config_name, resumed_from, checkpoint_path, device, config))

    train_data = batchify(corpus.splits["train"], config.batch_size).to(device)
    valid_data = batchify(corpus.splits["valid"], config.batch_size).to(device)
    epochs = tqdm(
        range(state.epoch + 1, config.max_max_epoch + 1),
        desc=f"train {config_name}",
        unit="epoch",
        initial=state.epoch,
        total=config.max_max_epoch,
        disable=None,
    )
    for epoch in epochs:
        lr = learning_rate(config, epoch, state.history)
        step.set_lr(lr)
        trained = run_epoch(
            model,
            train_data,
            config.num_steps,
            step=step,
            desc=f"epoch {epoch} train",
            epoch=epoch,
        )
        valid = run_epoch(
            model,
            valid_data,
            config.num_steps,
            precision=settings.precision,
            desc=f"epoch {epoch} valid",
            epoch=epoch,
        )
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
        save_checkpoint(checkpoint_path, identity, model, optimizer, lr, state, tracking_run_id)
        tqdm.write(
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
