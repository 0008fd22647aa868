"""`ptblm compare`: the table from metrics/ and from a real SQLite MLflow store."""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from ptblm.cli import main
from ptblm.compare import REFERENCE, from_metrics, with_reference
from ptblm.fsutil import write_json

PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"


def write_results(metrics: Path, config: str, valid: float, test: float) -> None:
    write_json(
        metrics / config / "train.json",
        {"config": config, "train_perplexity": 40.0, "valid_perplexity": valid, "device": "cpu"},
    )
    write_json(metrics / config / "eval.json", {"config": config, "test_perplexity": test})
    write_json(metrics / config / "speed.json", {"words_per_sec": 12345.6, "wall_time_s": 600.0})


def test_deltas_to_the_paper_and_reference_rows(tmp_path: Path) -> None:
    write_results(tmp_path, "small", valid=121.7, test=113.5)
    write_results(tmp_path, "test", valid=900.0, test=880.0)
    table = with_reference(from_metrics(tmp_path))
    small = table[table["run"] == "metrics/small"].iloc[0]
    assert small["Δvalid vs paper"] == pytest.approx(1.0)
    assert small["Δtest vs paper"] == pytest.approx(-1.0)
    assert pd.isna(table[table["run"] == "metrics/test"].iloc[0]["Δtest vs paper"])
    # the published rows of the configs that were run, and only those
    published = {source for source, configs in REFERENCE.items() if "small" in configs}
    assert published == {"paper (Zaremba et al. 2014)", "TF tutorial"}
    assert set(table.loc[table["config"] == "small", "run"]) == {"metrics/small", *published}
    assert set(table["config"]) == {"small", "test"}


def test_variants_are_shown_with_the_published_results_of_their_recipes(tmp_path: Path) -> None:
    write_results(tmp_path, "large-tied", valid=74.0, test=71.0)
    write_results(tmp_path, "small-gru", valid=125.0, test=119.5)
    table = with_reference(from_metrics(tmp_path)).set_index(["config", "run"])
    large = table.loc["large-tied"]
    assert large.loc["pytorch/examples word_language_model --tied", "test"] == 72.30
    assert large.loc["pytorch/examples word_language_model", "test"] == 77.42  # untied
    assert large.loc["variational LSTM (Gal & Ghahramani 2016)", "test"] == 75.2
    assert large.loc["paper (Zaremba et al. 2014)", "test"] == 78.4
    # the deltas are against the 2014 model of the same size
    assert large.loc["metrics/large-tied", "Δtest vs paper"] == pytest.approx(71.0 - 78.4)
    gru = table.loc["small-gru"]
    assert set(gru.index) == {"metrics/small-gru", "paper (Zaremba et al. 2014)"}
    assert gru.loc["metrics/small-gru", "Δtest vs paper"] == pytest.approx(5.0)


def test_command_writes_markdown_and_csv(tmp_path: Path, monkeypatch) -> None:
    write_results(tmp_path / "metrics", "medium", valid=86.0, test=82.0)
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    args = ["compare", "--params", str(PARAMS), "--source", "metrics"]
    result = runner.invoke(main, [*args, "--format", "markdown"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("| run ")
    assert "| 82.07 " in result.output  # the tutorial's medium test perplexity
    assert "| -0.70 " in result.output  # 82.0 - 82.7

    result = runner.invoke(main, [*args, "--format", "csv", "--output", "out.csv"])
    assert result.exit_code == 0, result.output
    csv = pd.read_csv(tmp_path / "out.csv")
    assert list(csv["config"]) == ["medium"] * 3
    assert csv.loc[csv["run"] == "metrics/medium", "words/s"].item() == pytest.approx(12345.6)

    result = runner.invoke(main, args)
    assert result.exit_code == 0 and "metrics/medium" in result.output


def test_runs_from_the_mlflow_store(tmp_path: Path, monkeypatch) -> None:
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("ptb-lm")
    for name, test in (("small-a", 115.0), ("small-b", 114.0)):
        with mlflow.start_run(run_name=name):
            mlflow.set_tags({"config": "small", "device_name": "cpu (2 threads)"})
            mlflow.log_metrics(
                {
                    "final_train_perplexity": 37.0,
                    "final_valid_perplexity": 121.0,
                    "test_perplexity": test,
                    "mean_words_per_sec": 5000.0,
                    "train_wall_time_s": 3600.0,
                }
            )
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    result = CliRunner().invoke(main, ["compare", "--params", str(PARAMS), "--format", "csv"])
    assert result.exit_code == 0, result.output
    table = pd.read_csv(io.StringIO(result.output))
    runs = table[table["run"].str.startswith("small-")]
    assert list(runs["run"]) == ["small-a", "small-b"]
    assert list(runs["Δtest vs paper"].round(2)) == [0.5, -0.5]


def test_missing_store_is_a_one_line_error(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'none.db'}")
    result = CliRunner().invoke(main, ["compare", "--params", str(PARAMS)])
    assert result.exit_code == 1
    assert "no MLflow store" in result.output and "--source metrics" in result.output
    assert not (tmp_path / "none.db").exists()
