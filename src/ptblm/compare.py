"""`ptblm compare`: runs side by side with published perplexities: the paper's and the
tutorial's, and for the variants pytorch/examples' and Gal & Ghahramani's.

Rows come from the MLflow store (every tracked run) or from metrics/ (the committed
results of each config); both give the same columns, so the report reads the same.
From the store, params that differ between the runs become columns (so rows of a sweep
can be told apart), and runs that differ only in `train.seed` get a summary row after
them: n, mean and sample standard deviation of their perplexities.
"""

from __future__ import annotations

import json
from dataclasses import MISSING, fields
from pathlib import Path

import pandas as pd

from .config import OPERATIONAL_KEYS
from .errors import PtblmError
from .tracking import AUX, sqlite_path

# The one place the published numbers live: source -> our config -> its perplexities
# (train / valid / test). A config's rows are the published numbers it is measured against:
# a variant gets the 2014 model of its size (the paper's deltas are against it) and the
# published results of the recipe it follows (docs/reproduction.md, "Beyond the 2014 model").
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
# Test-time adaptation (stage adapt): published static / neural cache / dynamic evaluation
# test perplexities on PTB, shown whenever a row has adapted figures.
ADAPTATION_REFERENCE = [
    {  # salesforce/awd-lstm-lm README: finetuned 58.8 / 56.5, + cache pointer 53.2 / 52.5
        "run": "AWD-LSTM + cache pointer (awd-lstm-lm README)",
        "valid": 58.8,
        "test": 56.5,
        "test cache": 52.5,
    },
    {  # Krause et al. (2018), abstract: 51.6 valid / 51.1 test (their static base: AWD-LSTM)
        "run": "AWD-LSTM + dynamic eval (Krause et al. 2018)",
        "test dynamic": 51.1,
    },
    {  # Grave et al. (2017) on PTB, as Merity et al. (2018) and Yang et al. (2018) list it
        "run": "LSTM + neural cache (Grave et al. 2017)",
        "test": 82.3,
        "test cache": 72.1,
    },
]
PUBLISHED_ADAPTATION = "published adaptation"  # the config column of those rows
PAPER = "paper (Zaremba et al. 2014)"
SPLITS = ("train", "valid", "test")
ADAPTED = ("test cache", "test dynamic")  # test perplexity with the cache, dynamic evaluation
COLUMNS = ["run", "config", *SPLITS, *ADAPTED, "words/s", "train wall s", "device"]
SEED = "train.seed"
NUMBERS = {*SPLITS, *ADAPTED, "words/s", "train wall s", "n", *(f"sd {s}" for s in SPLITS)}
WHOLE = ("words/s", "train wall s", "n")  # shown without decimals


class CompareError(PtblmError):
    """Nothing to compare; the message says where it looked."""


def from_metrics(metrics_dir: Path, timings_dir: Path) -> pd.DataFrame:
    """One row per config with a train.json under metrics/ (its eval.json and
    timings/<config>/speed.json if present), and after it, where the config was trained
    with several seeds (metrics/<config>/seeds.json, `ptblm seeds`), their n, mean and sd."""

    def read(path: Path) -> dict:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}

    rows = []
    for train_json in sorted(Path(metrics_dir).glob("*/train.json")):
        folder = train_json.parent
        trained, evaluated = read(folder / "train.json"), read(folder / "eval.json")
        stale = scored_another_model(trained, evaluated)
        adapted = read(folder / "adapt.json")
        notes = [stale] if stale else []
        if scored_another_model(trained, adapted):
            notes.append("adapt.json adapted another model than train.json's: rerun adapt")
            adapted = {}
        speed = read(Path(timings_dir) / folder.name / "speed.json")
        rows.append(
            {
                "run": f"metrics/{folder.name}",
                "config": folder.name,
                "train": trained.get("train_perplexity"),
                "valid": trained.get("valid_perplexity"),
                "test": None if stale else evaluated.get("test_perplexity"),
                **{
                    f"test {method}": adapted.get(method, {}).get("test_perplexity")
                    for method in ("cache", "dynamic")
                },
                "words/s": speed.get("words_per_sec"),
                "train wall s": speed.get("wall_time_s"),
                "device": speed.get("device", trained.get("device")),
                **({"note": "; ".join(notes)} if notes else {}),
            }
        )
        seeds = read(folder / "seeds.json")
        if seeds:
            rows.append(
                {
                    "run": f"metrics/{folder.name}/seeds.json: mean of {seeds['n']} seeds",
                    "config": folder.name,
                    "n": seeds["n"],
                    **{split: seeds[split]["mean"] for split in SPLITS},
                    **{f"sd {split}": seeds[split]["sd"] for split in SPLITS},
                }
            )
    if not rows:
        raise CompareError(f"no */train.json under {metrics_dir}; run the pipeline first")
    table = pd.DataFrame(rows)
    return table[[*COLUMNS, *table.columns.difference(COLUMNS, sort=False)]]


def scored_another_model(trained: dict, evaluated: dict) -> str:
    """Why eval.json's test perplexity is not the trained model's ("" if it is, or if either
    file predates `model_md5`): train reran and evaluate has not, or failed."""
    ours, scored = trained.get("model_md5"), evaluated.get("model_md5")
    if ours and scored and ours != scored:
        return "eval.json scored another model than train.json's: rerun evaluate"
    return ""


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

    def column(*names: str) -> pd.Series:
        """The first of `names` a run has (runs logged before a rename have the old name)."""
        result = pd.Series([None] * len(runs), index=runs.index, dtype=object)
        for name in reversed(names):
            if name in runs:
                result = runs[name].combine_first(result)
        return result

    table = pd.DataFrame(
        {
            "run": column("tags.mlflow.runName"),
            "config": column("tags.config"),
            "train": column("metrics.train_perplexity", "metrics.final_train_perplexity"),
            "valid": column("metrics.valid_perplexity", "metrics.final_valid_perplexity"),
            "test": column("metrics.test_perplexity"),
            "test cache": column("metrics.test_perplexity_cache"),
            "test dynamic": column("metrics.test_perplexity_dynamic"),
            "words/s": column(f"metrics.{AUX}mean_words_per_sec", "metrics.mean_words_per_sec"),
            "train wall s": column(f"metrics.{AUX}train_wall_time_s", "metrics.train_wall_time_s"),
            "device": column("tags.device_name"),
        }
    )
    params = pd.DataFrame(
        {c.removeprefix("params."): runs[c] for c in runs.columns if c.startswith("params.")},
        index=runs.index,
    )
    for key, default in param_defaults().items():  # a run logged before the key existed
        if key in params:
            params[key] = params[key].fillna(default)
    # operational settings (threads, device, waits) do not make runs differ; runs logged
    # before they became tags have them as params
    params = params.drop(columns=[k for k in OPERATIONAL_KEYS if k in params])
    params = params.fillna("")
    varying = [k for k in params if k != "config" and params[k].nunique() > 1]
    table = pd.concat([table, params[varying]], axis=1).reset_index(drop=True)
    return with_seed_groups(table, params.reset_index(drop=True))


def param_defaults() -> dict[str, str]:
    """Each logged param's value when params.yaml does not name it (as MLflow logs it): a run
    from before a key existed computed with that value, so it groups with runs that name it."""
    from .config import ModelConfig, TrainParams

    defaults = {f.name: f.default for f in fields(ModelConfig) if f.default is not MISSING}
    defaults |= {f"train.{f.name}": f.default for f in fields(TrainParams)}
    return {key: str(value) for key, value in defaults.items()}


def with_seed_groups(table: pd.DataFrame, params: pd.DataFrame) -> pd.DataFrame:
    """After each set of 2+ evaluated runs alike in everything but `train.seed`: a row with
    n and the mean and sample standard deviation (n - 1) of their perplexities."""
    table = table.assign(n=1)
    same = [k for k in params if k != SEED]
    keys = table["config"].astype(str) + "\x00" + params[same].astype(str).agg("\x00".join, axis=1)
    # a run without a test perplexity (failed, killed, not evaluated yet) is listed, never averaged
    keys = keys.where(pd.to_numeric(table["test"]).notna(), "\x01" + table.index.astype(str))
    rows, done = [], set()
    for index, key in enumerate(keys):
        rows.append(table.iloc[[index]])
        members = keys.index[keys == key]
        if key in done or index != members[-1] or len(members) < 2:
            continue
        done.add(key)
        group = table.loc[members]
        summary = {
            "run": f"mean of {len(members)} runs",
            "config": group["config"].iloc[0],
            "n": len(members),
            "device": group["device"].iloc[0] if group["device"].nunique() == 1 else "",
        }
        for name in (*SPLITS, *ADAPTED, "words/s", "train wall s"):
            summary[name] = pd.to_numeric(group[name]).mean()
        for split in SPLITS:
            summary[f"sd {split}"] = pd.to_numeric(group[split]).std(ddof=1)
        averaged = [*summary, *SPLITS, *ADAPTED, "words/s", "train wall s"]
        for name in table.columns.difference(averaged):
            values = group[name].astype(str).unique()
            summary[name] = values[0] if len(values) == 1 else ""
        if SEED in table:  # the seeds, in order
            summary[SEED] = ",".join(sorted(params.loc[members, SEED].astype(str), key=_natural))
        rows.append(pd.DataFrame([summary]))
    return pd.concat(rows, ignore_index=True)


def _natural(text: str) -> tuple:
    return (0, int(text), "") if text.lstrip("-").isdigit() else (1, 0, text)


def with_reference(runs: pd.DataFrame) -> pd.DataFrame:
    """Add deltas to the paper, and the published rows of every config that was run."""
    table = runs.copy()
    paper = table["config"].map(REFERENCE[PAPER])
    for split in ("valid", "test"):
        published = paper.map(lambda ref, s=split: ref.get(s) if isinstance(ref, dict) else None)
        delta = pd.to_numeric(table[split]) - pd.to_numeric(published)
        table[f"Δ{split} vs paper (ppl)"] = delta
        table[f"Δ{split} vs paper (%)"] = 100 * delta / pd.to_numeric(published)
    reference = [
        {"run": source, "config": config, **values}
        for source, configs in REFERENCE.items()
        for config, values in configs.items()
        if config in set(table["config"])
    ]
    if pd.to_numeric(table[list(ADAPTED)].stack(), errors="coerce").notna().any():
        reference += [{"config": PUBLISHED_ADAPTATION, **row} for row in ADAPTATION_REFERENCE]
    table = pd.concat([table, pd.DataFrame(reference)], ignore_index=True)
    for method, column in zip(("cache", "dynamic"), ADAPTED, strict=True):  # vs the same row's
        table[f"Δtest {method} (%)"] = 100 * (
            pd.to_numeric(table[column]) / pd.to_numeric(table["test"]) - 1
        )
    return table.sort_values("config", kind="stable", ignore_index=True)


def render(table: pd.DataFrame, fmt: str) -> str:
    """Numbers to 2 decimals (words/s, seconds and n to whole units); params as logged;
    blanks, not NaN."""
    shown = table.copy()
    for name in shown.columns:
        if name not in NUMBERS and not name.startswith("Δ"):
            continue
        digits = 0 if name in WHOLE else 2
        shown[name] = pd.to_numeric(shown[name]).map(
            lambda v, d=digits: "" if pd.isna(v) else f"{v:,.{d}f}" if d == 0 else f"{v:.{d}f}"
        )
    shown = shown.fillna("")
    if fmt == "csv":
        return table.to_csv(index=False)
    if fmt == "markdown":
        return shown.to_markdown(index=False, disable_numparse=True) + "\n"
    return shown.to_string(index=False) + "\n"
