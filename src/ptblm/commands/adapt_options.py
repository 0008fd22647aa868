"""--cache / --dynamic and their values, for `ptblm score --carry-state`: the adapt stage's
methods on a user's stream, by default with the values the stage tuned for the config."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import click

from ..config import DYNAMIC_RULES, load_params
from .common import GRADIENT_RMS, METRICS_DIR, MODELS_DIR

CACHE_KEYS = ("window", "theta", "weight")
DYNAMIC_KEYS = ("learning_rate", "decay", "segment", "rule", "epsilon")


def adaptation_options(command):
    """--cache [--cache-window/-theta/-weight], --dynamic [--dynamic-lr/-decay/-segment/-rule]."""
    tuned = " [default: the adapt stage's choice, metrics/<config>/adapt.json]"
    options = [
        click.option(
            "--cache",
            "use_cache",
            is_flag=True,
            help="With --carry-state: mix in the neural cache (Grave et al. 2017).",
        ),
        click.option("--cache-window", type=click.IntRange(min=1), help="Positions." + tuned),
        click.option("--cache-theta", type=click.FloatRange(min=0), help="theta." + tuned),
        click.option("--cache-weight", type=click.FloatRange(0, 1), help="lambda." + tuned),
        click.option(
            "--dynamic",
            "use_dynamic",
            is_flag=True,
            help="With --carry-state: dynamic evaluation (Krause et al. 2018).",
        ),
        click.option("--dynamic-lr", type=click.FloatRange(min=0), help="Step size." + tuned),
        click.option("--dynamic-decay", type=click.FloatRange(0, 1), help="lambda." + tuned),
        click.option("--dynamic-segment", type=click.IntRange(min=1), help="Tokens." + tuned),
        click.option(
            "--dynamic-epsilon",
            type=click.FloatRange(min=0, min_open=True),
            help="rms: added to the gradient's RMS." + tuned,
        ),  # fmt: skip
        click.option(
            "--dynamic-rule",
            type=click.Choice(DYNAMIC_RULES),
            help="rms needs models/<config>/gradient_rms.pt (the adapt stage writes it)." + tuned,
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def chosen_adaptation(
    params_path: Path, model_name: str | None, model_uri: str | None, **given: Any
) -> tuple | None:
    """The `score.Adaptation` the options ask for, None for none; a value not given comes
    from the adapt stage's choice for the config (a one-line error if there is none)."""
    from ..adapt import CacheChoice
    from ..dynamic import DynamicSettings

    if given["use_cache"] and given["use_dynamic"]:
        raise click.UsageError("give --cache or --dynamic, not both")
    method = "cache" if given["use_cache"] else "dynamic" if given["use_dynamic"] else None
    stray = [
        k
        for k, v in given.items()
        if v is not None and v is not False and not k.startswith(("use_", f"{method}_"))
    ]
    if stray:
        flag = "--" + stray[0].replace("_", "-")
        raise click.UsageError(f"{flag} needs --{stray[0].split('_')[0]}")
    if method is None:
        return None
    config = _config_name(params_path, model_name, model_uri)
    keys = CACHE_KEYS if method == "cache" else DYNAMIC_KEYS
    values = {k: given[_option(method, k).replace("-", "_")] for k in keys}
    missing = [k for k, v in values.items() if v is None]
    if missing:
        values |= _tuned(config, method, missing)
    if method == "cache":
        return (CacheChoice(values["window"], values["theta"], values["weight"]),)
    settings = DynamicSettings(
        values["learning_rate"], values["decay"], values["segment"], values["rule"],
        values["epsilon"],
    )  # fmt: skip
    return settings, _gradient_rms(config) if settings.rule == "rms" else None


def _option(method: str, key: str) -> str:
    """The option that sets `key` of `method`: cache-theta, dynamic-lr, ..."""
    return f"{method}-{'lr' if key == 'learning_rate' else key}"


def _config_name(params_path: Path, model_name: str | None, model_uri: str | None) -> str | None:
    """The pipeline config the model belongs to; None for an MLflow model or a file's path."""
    if model_uri or (model_name and (model_name.endswith(".pt") or os.sep in model_name)):
        return None
    return model_name or load_params(params_path).model


def _tuned(config: str | None, method: str, keys: list[str]) -> dict[str, Any]:
    flags = ", ".join(f"--{_option(method, k)}" for k in keys)
    if config is None:
        raise click.UsageError(f"no tuned values for a model outside the pipeline: give {flags}")
    path = METRICS_DIR / config / "adapt.json"
    try:
        chosen = json.loads(path.read_text(encoding="utf-8"))[method]
        return {k: chosen[k] for k in keys}
    except (FileNotFoundError, KeyError, json.JSONDecodeError, TypeError):
        raise click.ClickException(
            f"{path}: no tuned {method} values; run the adapt stage (dvc repro) or give {flags}"
        ) from None


def _gradient_rms(config: str | None):
    import torch

    path = MODELS_DIR / str(config) / GRADIENT_RMS
    if config is None or not path.is_file():
        raise click.ClickException(
            f"the rms rule needs the training data's gradient RMS ({path}, written by the "
            "adapt stage): run it (dvc repro), or use --dynamic-rule sgd"
        )
    return list(torch.load(path, weights_only=True).values())
