"""Training checkpoints: what identifies a run, and saving and resuming it exactly.

A checkpoint resumes only the run that wrote it (config, data, seed, precision, code);
any other, or an unreadable file, is ignored with a note and the run starts fresh.
"""

from __future__ import annotations

import pickle
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from .config import ModelConfig, TrainParams
from .data import Corpus
from .fsutil import atomic_path

CHECKPOINT_FORMAT = 4  # 3: code and data in the identity, the tracking run id; 4: world size


@dataclass
class TrainState:
    """What resumes a run exactly: next epoch, history so far, RNG streams."""

    epoch: int = 0  # completed epochs
    history: list[dict[str, float]] = field(default_factory=list)


def run_identity(
    config_name: str,
    config: ModelConfig,
    corpus: Corpus,
    settings: TrainParams,
    code_version: str = "",
    world_size: int = 1,
) -> dict[str, Any]:
    """What a checkpoint must match to be resumed: the config, the data (vocabulary and the
    id arrays), the seed and precision, the code that trains (`codedeps.code_version`), and
    the number of processes (each draws its own dropout masks)."""
    return {
        "config_name": config_name,
        "config": asdict(config),
        "vocab_fingerprint": corpus.fingerprint,
        "ids_fingerprint": corpus.ids_fingerprint(),
        "code_version": code_version,
        "seed": settings.seed,
        "precision": settings.precision,
        "world_size": world_size,
    }


def save_checkpoint(
    path: Path,
    identity: dict,
    model,
    optimizer,
    lr: float,
    state: TrainState,
    tracking_run_id: str | None = None,
):
    payload = {
        "format": CHECKPOINT_FORMAT,
        **identity,
        "epoch": state.epoch,
        "lr": lr,
        "history": state.history,
        "tracking_run_id": tracking_run_id,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "rng_cpu": torch.get_rng_state(),
        "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


# What a torn, truncated or foreign checkpoint raises on loading (torch's zip reader raises
# RuntimeError; weights_only refusing an object, UnpicklingError). I/O errors are not here:
# a disk or permission problem must surface, not silently throw the run's progress away.
UNREADABLE_CHECKPOINT = (RuntimeError, pickle.UnpicklingError, EOFError, ValueError)


def _read_checkpoint(path: Path, identity: dict) -> dict | None:
    """The checkpoint's payload if it was written for this exact run; None (and a note)."""
    if not path.exists():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except UNREADABLE_CHECKPOINT as exc:
        reason = " ".join(str(exc).split())[:200]
        tqdm.write(f"note: ignoring unreadable checkpoint {path} ({reason}); starting fresh")
        return None
    if not isinstance(payload, dict):
        tqdm.write(f"note: ignoring {path}: not a ptb-lm checkpoint; starting fresh")
        return None
    expected = {"format": CHECKPOINT_FORMAT, **identity}
    mismatched = [k for k, v in expected.items() if payload.get(k) != v]
    if mismatched:
        why = {
            "code_version": "code",
            "ids_fingerprint": "data",
            "vocab_fingerprint": "vocabulary",
            "config": "hyperparameters",
            "config_name": "config",
        }
        tqdm.write(
            f"note: not resuming {path}: it was written with other "
            f"{', '.join(why.get(k, k) for k in mismatched)}; starting fresh"
        )
        return None
    return payload


def checkpoint_run_id(path: Path, identity: dict) -> str | None:
    """The tracking run a resumable checkpoint belongs to, so a resumed run logs to it."""
    payload = _read_checkpoint(path, identity)
    return payload.get("tracking_run_id") if payload else None


def load_checkpoint(path: Path, identity: dict, model, optimizer) -> TrainState | None:
    """Restore a checkpoint written for this exact run; None (and a note) otherwise."""
    payload = _read_checkpoint(path, identity)
    if payload is None:
        return None
    model.load_state_dict(payload["model"])
    optimizer.load_state_dict(payload["optimizer"])
    torch.set_rng_state(payload["rng_cpu"])
    if payload["rng_cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(payload["rng_cuda"])
    return TrainState(epoch=payload["epoch"], history=payload["history"])
