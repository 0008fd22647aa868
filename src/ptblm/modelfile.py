"""Trained model files (docs/model-file.md): writing one, and loading it for a selected config.

Loading refuses a file made for another config or vocabulary; `ptblm.api` reads the same
files for users, with no params or data/prepared at hand.
"""

from __future__ import annotations

from dataclasses import MISSING, asdict, fields
from pathlib import Path

import torch

from .config import ModelConfig
from .data import Corpus
from .errors import TrainingError
from .fsutil import save_tensors
from .model import PTBModel

MODEL_FORMAT = 2


def save_model(path: Path, model: PTBModel, config_name: str, corpus: Corpus) -> None:
    payload = {
        "format": MODEL_FORMAT,
        "config_name": config_name,
        "config": asdict(model.config),
        "vocab_fingerprint": corpus.fingerprint,
        "vocab": corpus.vocab,  # self-contained: ptblm.load_model needs no data/prepared
        "state_dict": model.state_dict(),
    }
    save_tensors(payload, path)


def load_for_config(path: Path, config_name: str, config: ModelConfig, corpus: Corpus) -> PTBModel:
    """Load a trained model for the selected config, refusing one made for another config
    or vocabulary, or by a version of ptblm this one cannot read."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise TrainingError(f"{path}: no trained model; run the train stage first") from None
    except Exception as exc:
        raise TrainingError(f"{path}: not a ptb-lm model file ({exc}); train again") from None
    if not isinstance(payload, dict) or payload.get("format") != MODEL_FORMAT:
        raise TrainingError(
            f"{path}: not a ptb-lm model file of format {MODEL_FORMAT}; train again"
        )
    if payload.get("vocab_fingerprint") != corpus.fingerprint:
        raise TrainingError(
            f"{path}: trained on another vocabulary than data/prepared; "
            "re-run prepare and train together (dvc repro)"
        )
    require_known_keys(payload.get("config"), path)
    differs = _config_differences(payload["config"], config)
    if payload.get("config_name") != config_name:
        differs.insert(0, f"config {payload.get('config_name')!r} (selected: {config_name!r})")
    if differs:
        raise TrainingError(
            f"{path}: trained with another config than the selected {config_name!r}: "
            f"{', '.join(differs)}; train this config first (dvc repro)"
        )
    model = PTBModel(config)
    model.load_state_dict(payload["state_dict"])
    return model


def require_known_keys(saved: object, path: Path) -> None:
    """A model file's config must be a mapping of keys this version knows: one written by a
    newer ptblm (a variant switch added since) is refused by name, not with a TypeError."""
    if not isinstance(saved, dict):
        raise TrainingError(f"{path}: not a ptb-lm model file (its config is not a mapping)")
    unknown = sorted(set(saved) - {f.name for f in fields(ModelConfig)})
    if unknown:
        raise TrainingError(
            f"{path}: its config has keys this ptblm does not know ({', '.join(unknown)}); "
            "it was written by a newer ptblm: upgrade ptblm to load it"
        )


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
