"""`ptblm.load_model`: a trained model and its vocabulary, for plain PyTorch use.

    import ptblm
    lm = ptblm.load_model("models/small/model.pt")     # or "runs:/<run id>/model"
    model, vocab = lm                                   # a PTBModel (eval mode) and list[str]

Sources: a model file (docs/model-file.md), an MLflow model folder, or any MLflow model URI
(`runs:/…`, `models:/…`); mlflow is imported only for a URI. Needs only torch otherwise.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import NamedTuple

import torch

from .config import ModelConfig
from .data import read_vocab, vocab_fingerprint
from .errors import PtblmError
from .model import PTBModel
from .modelfile import require_known_keys

MODEL_FILE = "model.pt"
VOCAB_FILE = "vocab.txt"
PREPARED_VOCAB = Path("data/prepared") / VOCAB_FILE  # older model files carry no vocabulary
_URI = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:/")


class ModelError(PtblmError):
    """A model that cannot be found or read; the message says where it looked."""


class LanguageModel(NamedTuple):
    """A trained PTBModel (on CPU, eval mode) and its vocabulary (id = index)."""

    model: PTBModel
    vocab: list[str]

    @property
    def word_to_id(self) -> dict[str, int]:
        return {w: i for i, w in enumerate(self.vocab)}


def load_model(path_or_uri: str | os.PathLike, device: str | torch.device = "cpu") -> LanguageModel:
    """Load a model file, an MLflow model folder, or an MLflow model URI (see module doc)."""
    source = os.fspath(path_or_uri)
    if _URI.match(source) and not source.startswith("file:"):
        folder = _download(source)
    else:
        folder = Path(source.removeprefix("file://"))
    if folder.is_dir():
        artifacts = folder / "artifacts"  # an MLflow pyfunc folder keeps its files there
        base = artifacts if (artifacts / MODEL_FILE).is_file() else folder
        return load_files(base / MODEL_FILE, base / VOCAB_FILE, device)
    return load_files(folder, None, device)


def load_files(
    model_path: Path | str, vocab_path: Path | str | None = None, device: str | torch.device = "cpu"
) -> LanguageModel:
    """A model file and its vocabulary: the one inside the file, else `vocab_path`, else
    data/prepared/vocab.txt, checked against the file's vocabulary fingerprint."""
    model_path = Path(model_path)
    try:
        payload = torch.load(model_path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ModelError(
            f"{model_path}: no such model file; train it first (dvc repro) or pass another"
        ) from None
    except Exception as exc:
        raise ModelError(f"{model_path}: not a ptb-lm model file ({exc})") from None
    if not isinstance(payload, dict) or "state_dict" not in payload or "config" not in payload:
        raise ModelError(f"{model_path}: not a ptb-lm model file (no config and state_dict)")
    vocab = payload.get("vocab") or _vocab_from_file(Path(vocab_path or PREPARED_VOCAB), model_path)
    expected = payload.get("vocab_fingerprint")
    if expected and vocab_fingerprint(vocab) != expected:
        raise ModelError(
            f"{model_path}: the vocabulary at hand is not the one it was trained on; "
            "use the vocab.txt it was trained with"
        )
    try:
        require_known_keys(payload["config"], model_path)
    except PtblmError as exc:
        raise ModelError(str(exc)) from None
    model = PTBModel(ModelConfig(**payload["config"]))
    model.load_state_dict(payload["state_dict"])
    return LanguageModel(model.to(device).eval(), vocab)


def _vocab_from_file(path: Path, model_path: Path) -> list[str]:
    """For a model file that carries no vocabulary: the vocab.txt at `path`, or an error saying
    where to get one."""
    try:
        return read_vocab(path)
    except FileNotFoundError:
        raise ModelError(
            f"{model_path} carries no vocabulary and {path} does not exist; run the prepare "
            "stage (dvc repro) or train again"
        ) from None


def _download(uri: str) -> Path:
    """The model folder behind an MLflow URI, in MLflow's local cache (quietly)."""
    from .tracking import quiet_mlflow

    quiet_mlflow()
    try:
        import mlflow
    except ImportError:
        raise ModelError(f"{uri}: an MLflow URI needs mlflow (pip install mlflow)") from None
    try:
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri))
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(
            f"{uri}: cannot fetch this MLflow model ({first}); check the run id and "
            "MLFLOW_TRACKING_URI"
        ) from None
