"""Training checkpoints: what identifies a run, where its checkpoint lives, saving and
resuming it exactly.

A run's identity is what changes its result (config.SETTINGS' result keys, the data and the
training code); its checkpoint is `checkpoints/<config>/<hash of the identity>.pt` at the
project root, so two seeds or two configs never share a file, a changed result key starts a
checkpoint of its own beside the other, and a queued DVC experiment (which runs in a temp
copy that DVC deletes) resumes from the same file when queued again or run in the workspace.
"""

from __future__ import annotations

import hashlib
import json
import pickle
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from .config import ModelConfig, TrainParams, training_result
from .data import Corpus
from .fsutil import save_tensors

CHECKPOINT_FORMAT = 5  # 4: world size; 5: the identity is config.SETTINGS' result keys
CHECKPOINTS = "checkpoints"  # under the project root
RUN_FILE_GLOB = f"{'[0-9a-f]' * 16}.pt"  # a run's checkpoint, as `checkpoint_path` names it


@dataclass
class TrainState:
    """Where a run stands: the epochs completed and their records (the RNG streams, model and
    optimizer live beside it in the checkpoint)."""

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
    """What a checkpoint must match to be resumed: the result keys (config, seed, precision,
    processes: `world_size`, which torchrun by hand may set apart from params), the data
    (vocabulary and id arrays) and the code that trains (`codedeps.code_version`)."""
    result = training_result(config_name, config, settings)
    return {
        "settings": {**result, "train.nproc_per_node": world_size},
        "vocab_fingerprint": corpus.fingerprint,
        "ids_fingerprint": corpus.ids_fingerprint(),
        "code_version": code_version,
    }


def checkpoint_path(root: Path, identity: dict[str, Any]) -> Path:
    """`root`/checkpoints/<config>/<16 hex digits of the identity's hash>.pt."""
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    return Path(root) / CHECKPOINTS / identity["settings"]["config"] / f"{digest}.pt"


def save_checkpoint(
    path: Path,
    identity: dict,
    model,
    optimizer,
    state: TrainState,
    tracking_run_id: str | None = None,
):
    payload = {
        "format": CHECKPOINT_FORMAT,
        **identity,
        "epoch": state.epoch,
        "history": state.history,
        "tracking_run_id": tracking_run_id,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "rng_cpu": torch.get_rng_state(),
        "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    save_tensors(payload, path)


# What a torn, truncated or foreign checkpoint raises on loading (torch's zip reader raises
# RuntimeError; weights_only refusing an object, UnpicklingError). I/O errors are not here:
# a disk or permission problem must surface, not silently throw the run's progress away.
UNREADABLE_CHECKPOINT = (RuntimeError, pickle.UnpicklingError, EOFError, ValueError)


def _read_checkpoint(path: Path, identity: dict, mmap: bool = False) -> dict | None:
    """The checkpoint's payload if it was written for this exact run; None (and a note)."""
    if not path.exists():
        return None
    payload = read_payload(path, mmap)
    if payload is None:
        return None
    expected = {"format": CHECKPOINT_FORMAT, **identity}
    mismatched = [k for k, v in expected.items() if payload.get(k) != v]
    if mismatched:
        why = {"code_version": "code", "ids_fingerprint": "data", "vocab_fingerprint": "vocabulary"}
        saved = payload.get("settings") or {}
        differ = [
            f"{key} {saved.get(key)!r} (now {value!r})"
            for key, value in identity["settings"].items()
            if saved.get(key) != value
        ]
        reasons = [why.get(k, k) for k in mismatched if k != "settings"]
        reasons += [f"settings: {', '.join(differ)}"] if "settings" in mismatched else []
        tqdm.write(
            f"note: not resuming {path}: it was written with other {'; '.join(reasons)}; "
            "starting fresh"
        )
        return None
    return payload


def read_payload(path: Path, mmap: bool = False) -> dict | None:
    """A checkpoint file's contents, None (and a note) when it is torn or not a checkpoint.
    `mmap`: tensors stay on disk until touched (for listing large checkpoints)."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except UNREADABLE_CHECKPOINT as exc:
        reason = " ".join(str(exc).split())[:200]
        tqdm.write(f"note: ignoring unreadable checkpoint {path} ({reason}); starting fresh")
        return None
    if not isinstance(payload, dict):
        tqdm.write(f"note: ignoring {path}: not a ptb-lm checkpoint; starting fresh")
        return None
    return payload


def checkpoint_run_id(path: Path, identity: dict) -> str | None:
    """The tracking run a resumable checkpoint belongs to, so a resumed run logs to it."""
    payload = _read_checkpoint(path, identity, mmap=True)  # the weights are left on disk
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


@dataclass(frozen=True)
class CheckpointInfo:
    """One checkpoint on disk, as `ptblm checkpoints` lists it."""

    path: Path
    config: str
    epoch: int
    epochs: int
    seed: Any
    size_bytes: int
    modified: float  # seconds since the epoch
    stale: str  # why it can never resume with the code at hand ("" if it can)


def checkpoints(root: Path, code_version: str) -> Iterator[CheckpointInfo]:
    """Every checkpoint under `root`/checkpoints, oldest first. A checkpoint is stale when no
    rerun of this code can resume it (another format or other training code)."""
    found = Path(root, CHECKPOINTS).glob(f"*/{RUN_FILE_GLOB}")
    files = sorted(found, key=lambda p: p.stat().st_mtime)
    for path in files:
        payload = read_payload(path, mmap=True) or {}
        settings = payload.get("settings") or {}
        if payload.get("format") != CHECKPOINT_FORMAT:
            stale = "another checkpoint format"
        elif payload.get("code_version") != code_version:
            stale = "other training code"
        else:
            stale = ""
        stat = path.stat()
        yield CheckpointInfo(
            path=path,
            config=settings.get("config", path.parent.name),
            epoch=payload.get("epoch", 0),
            epochs=settings.get("max_max_epoch", 0),
            seed=settings.get("train.seed"),
            size_bytes=stat.st_size,
            modified=stat.st_mtime,
            stale=stale,
        )


def others(path: Path) -> list[Path]:
    """The other checkpoints of `path`'s config (a note at the start of training: they are
    never removed silently, nor left to pile up unseen)."""
    return sorted(p for p in path.parent.glob(RUN_FILE_GLOB) if p != path)
