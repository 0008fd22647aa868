"""`ptblm compare`: runs side by side with published perplexities: the paper's and the
tutorial's, and for the variants pytorch/examples' and Gal & Ghahramani's.

Rows come from the MLflow store (every tracked run) or from metrics/ (the committed
results of each config); both give the same columns, so the report reads the same.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from .errors import PtblmError
from .tracking import sqlite_path

# The one place the published numbers live: source -> our config -> its perplexities
# (train / valid / test). A config's rows are the published numbers it is measured against:
# a variant gets the 2014 model of its size (the paper's deltas are against it) and the
# published results of the recipe it follows (reference.md, "Beyond the baseline").
_ZAREMBA = {
    "small": {"valid": 120.7, "test": 114.5},
    "medium": {"valid": 86.2, "test": 82.7},
    "large": {"valid": 82.2, "test": 78.4},
}
REFERENCE: dict[str, dict[str, dict[str, float]]] = {
    # Zaremba et al. (2014), Table 1
    "paper (Zaremba et al. 2014)": {
        **_ZAREMBA,
        "small-tied": _ZAREMBA["small"],
        "small-gru": _ZAREMBA["small"],
        "medium-tied": _ZAREMBA["medium"],
        "large-tied": _ZAREMBA["large"],
    },
    # the TensorFlow ptb_word_lm.py tutorial's reported results
    "TF tutorial": {
        "small": {"train": 36.9, "valid": 122.3, "test": 116.7},
        "medium": {"train": 48.45, "valid": 86.16, "test": 82.07},
        "large": {"train": 37.87, "valid": 82.62, "test": 78.29},
    },
    # pytorch/examples word_language_model README (older versions): 2-layer LSTM, 650 units
    # dropout 0.5 / 1500 units dropout 0.65, 40 epochs, lr 20 / 4 on plateau, clip 0.25
    "pytorch/examples word_language_model": {
        "medium-tied": {"test": 80.97},
        "large-tied": {"test": 77.42},
    },
    "pytorch/examples word_language_model --tied": {
        "medium-tied": {"test": 75.96},
        "large-tied": {"test": 72.30},
    },
    # Gal & Ghahramani (2016), Table 1: variational LSTM (untied embeddings), medium / large
    "variational LSTM (Gal & Ghahramani 2016)": {
        "medium-tied": {"valid": 81.9, "test": 79.7},
        "large-tied": {"valid": 77.9, "test": 75.2},
    },
}
PAPER = "paper (Zaremba et al. 2014)"
COLUMNS = ["run", "config", "train", "valid", "test", "words/s", "train wall s", "device"]


class CompareError(PtblmError):
    """Nothing to compare; the message says where it looked."""


def from_metrics(metrics_dir: Path) -> pd.DataFrame:
    """One row per config with a train.json under metrics/ (eval/speed files if present)."""

    def read(path: Path) -> dict:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}

    rows = []
    for train_json in sorted(Path(metrics_dir).glob("*/train.json")):
        folder = train_json.parent
        trained, evaluated, speed = (
            read(folder / n) for n in ("train.json", "eval.json", "speed.json")
        )
        rows.append(
            {
                "run": f"metrics/{folder.name}",
                "config": folder.name,
                "train": trained.get("train_perplexity"),
                "valid": trained.get("valid_perplexity"),
                "test": evaluated.get("test_perplexity"),
                "words/s": speed.get("words_per_sec"),
                "train wall s": speed.get("wall_time_s"),
                "device": speed.get("device", trained.get("device")),
            }
        )
    if not rows:
        raise CompareError(f"no */train.json under {metrics_dir}; run the pipeline first")
    return pd.DataFrame(rows, columns=COLUMNS)


def from_mlflow(uri: str, experiment: str) -> pd.DataFrame:
    """One row per run of the experiment, oldest first."""
    db = sqlite_path(uri)
    if db is not None and not db.is_file():
        raise CompareError(f"no MLflow store at {uri}; train first or use --source metrics")
    import mlflow

    from .tracking import use_store

    use_store(uri)
    runs = mlflow.search_runs(experiment_names=[experiment], order_by=["attributes.start_time"])
    if runs.empty:
        raise CompareError(f"no runs in experiment {experiment!r} at {uri}")

    def column(name: str) -> pd.Series:
        return runs[name] if name in runs else pd.Series([None] * len(runs), index=runs.index)

    table = pd.DataFrame(
        {
            "run": column("tags.mlflow.runName"),
            "config": column("tags.config"),
            "train": column("metrics.final_train_perplexity"),
            "valid": column("metrics.final_valid_perplexity"),
            "test": column("metrics.test_perplexity"),
            "words/s": column("metrics.mean_words_per_sec"),
            "train wall s": column("metrics.train_wall_time_s"),
            "device": column("tags.device_name"),
        }
    )
    return table.reset_index(drop=True)


def with_reference(runs: pd.DataFrame) -> pd.DataFrame:
    """Add deltas to the paper, and the published rows of every config that was run."""
    table = runs.copy()
    paper = table["config"].map(REFERENCE[PAPER])
    for split in ("valid", "test"):
        published = paper.map(lambda ref, s=split: ref.get(s) if isinstance(ref, dict) else None)
        table[f"Δ{split} vs paper"] = pd.to_numeric(table[split]) - pd.to_numeric(published)
    reference = [
        {"run": source, "config": config, **values}
        for source, configs in REFERENCE.items()
        for config, values in configs.items()
        if config in set(table["config"])
    ]
    return pd.concat([table, pd.DataFrame(reference)], ignore_index=True).sort_values(
        "config", kind="stable", ignore_index=True
    )


def render(table: pd.DataFrame, fmt: str) -> str:
    """Numbers to 2 decimals (words/s and seconds to whole units); blanks, not NaN."""
    shown = table.copy()
    for name in shown.columns:
        if name in ("run", "config", "device"):
            continue
        digits = 0 if name in ("words/s", "train wall s") else 2
        shown[name] = pd.to_numeric(shown[name]).map(
            lambda v, d=digits: "" if pd.isna(v) else f"{v:,.{d}f}" if d == 0 else f"{v:.{d}f}"
        )
    shown = shown.fillna("")
    if fmt == "csv":
        return table.to_csv(index=False)
    if fmt == "markdown":
        return shown.to_markdown(index=False, disable_numparse=True) + "\n"
    return shown.to_string(index=False) + "\n"
