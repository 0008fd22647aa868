"""--model / --model-uri / --device, shared by `generate` and `score`: which trained model."""

from __future__ import annotations

import os
from pathlib import Path

import click

from ..config import load_params
from .common import MODELS_DIR, params_option


def model_source(command):
    """--model / --model-uri / --device, shared by `generate` and `score`."""
    options = [
        click.option(
            "--model",
            "model_name",
            default=None,
            help="A config trained by the pipeline (models/<config>/model.pt) or a model "
            "file's path [default: params.yaml's model].",
        ),
        click.option(
            "--model-uri",
            default=None,
            help="An MLflow model instead: runs:/<run id>/model, models:/<name>/<version>, "
            "or a model folder (needs mlflow).",
        ),
        click.option(
            "--device",
            type=click.Choice(["cpu", "cuda"]),
            default="cpu",
            show_default=True,
        ),
        params_option,
    ]
    for option in reversed(options):
        command = option(command)
    return command


def language_model(params_path: Path, model_name: str | None, model_uri: str | None, device):
    """The model `--model`/`--model-uri` name, on `device` (a one-line error if unusable)."""
    import torch

    from ..api import ModelError, load_model

    if device == "cuda" and not torch.cuda.is_available():
        raise click.ClickException("--device cuda: no CUDA device is visible; use --device cpu")
    if model_uri and model_name:
        raise click.UsageError("give --model or --model-uri, not both")
    if model_uri:
        return load_model(model_uri, device)
    if model_name and (model_name.endswith(".pt") or os.sep in model_name):
        return load_model(model_name, device)
    name = model_name or load_params(params_path).model
    path = MODELS_DIR / name / "model.pt"
    if not path.is_file():
        from ..whereabouts import missing_model_message, read_selection

        configs, selected = read_selection(params_path)
        raise ModelError(missing_model_message(Path.cwd(), name, configs, selected))
    return load_model(path, device)
