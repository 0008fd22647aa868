"""`ptblm compare`: the table from metrics/ and from a real SQLite MLflow store."""

from __future__ import annotations

import io
import json
import statistics
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner
from conftest import committed_params_file

from ptblm.cli import main
from ptblm.compare import (
    ADAPTATION_REFERENCE,
    PUBLISHED_ADAPTATION,
    REFERENCE,
    from_metrics,
    with_reference,
)
from ptblm.fsutil import write_json


@pytest.fixture(scope="module")
def params_file(tmp_path_factory) -> Path:
    """HEAD's params.yaml (never the working copy's)."""
    return committed_params_file(tmp_path_factory.mktemp("params"))


def write_results(root: Path, config: str, valid: float, test: float) -> None:
    """metrics/<config>/{train,eval}.json and timings/<config>/speed.json under `root`."""
    metrics = root / "metrics"
    write_json(
        metrics / config / "train.json",
        {"config": config, "train_perplexity": 40.0, "valid_perplexity": valid, "device": "cpu"},
    )
    write_json(metrics / config / "eval.json", {"config": config, "test_perplexity": test})
    write_json(
        root / "timings" / config / "speed.json", {"words_per_sec": 12345.6, "wall_time_s": 600.0}
    )


def test_deltas_to_the_paper_and_reference_rows(tmp_path: Path) -> None:
    write_results(tmp_path, "small", valid=121.7, test=113.5)
    write_results(tmp_path, "test", valid=900.0, test=880.0)
    table = with_reference(from_metrics(tmp_path / "metrics", tmp_path / "timings"))
    small = table[table["run"] == "metrics/small"].iloc[0]
    assert small["Δvalid vs paper (ppl)"] == pytest.approx(1.0)
    assert small["Δtest vs paper (ppl)"] == pytest.approx(-1.0)
    assert pd.isna(table[table["run"] == "metrics/test"].iloc[0]["Δtest vs paper (ppl)"])
    # the published rows of the configs that were run, and only those
    published = {source for source, configs in REFERENCE.items() if "small" in configs}
    assert published == {"paper (Zaremba et al. 2014)", "TF tutorial"}
    assert set(table.loc[table["config"] == "small", "run"]) == {"metrics/small", *published}
    assert set(table["config"]) == {"small", "test"}


def test_adapted_perplexities_sit_beside_the_static_one_with_the_published_gains(
    tmp_path: Path,
) -> None:
    write_results(tmp_path, "small", valid=117.0, test=112.0)
    write_results(tmp_path, "small-tied", valid=113.0, test=109.0)
    write_results(tmp_path, "test", valid=900.0, test=880.0)
    metrics = tmp_path / "metrics"
    for config, md5 in (("small", "aaa"), ("small-tied", "bbb")):
        trained = json.loads((metrics / config / "train.json").read_text())
        write_json(metrics / config / "train.json", {**trained, "model_md5": "aaa"})
        adapted = {"cache": {"test_perplexity": 100.8}, "dynamic": {"test_perplexity": 95.2}}
        write_json(metrics / config / "adapt.json", {**adapted, "model_md5": md5})
    table = with_reference(from_metrics(metrics, tmp_path / "timings")).set_index("run")
    small = table.loc["metrics/small"]
    assert (small["test cache"], small["test dynamic"]) == (100.8, 95.2)
    assert small["Δtest cache (%)"] == pytest.approx(-10.0)
    assert small["Δtest dynamic (%)"] == pytest.approx(-15.0)
    # adapt.json of another model than the trained one is not shown, and says why
    tied = table.loc["metrics/small-tied"]
    assert pd.isna(tied["test cache"]) and tied["test"] == 109.0
    assert "rerun adapt" in tied["note"]
    assert pd.isna(table.loc["metrics/test", "test cache"])
    # the published static / cache / dynamic figures, each with its source
    awd = table.loc["AWD-LSTM + cache pointer (awd-lstm-lm README)"]
    assert (awd["test"], awd["test cache"]) == (56.5, 52.5)
    assert awd["Δtest cache (%)"] == pytest.approx(-7.08, abs=0.01)
    assert table.loc["AWD-LSTM + dynamic eval (Krause et al. 2018)", "test dynamic"] == 51.1
    grave = table.loc["LSTM + neural cache (Grave et al. 2017)"]
    assert (grave["test"], grave["test cache"]) == (82.3, 72.1)
    assert set(table.loc[table["config"] == PUBLISHED_ADAPTATION].index) == {
        row["run"] for row in ADAPTATION_REFERENCE
    }
    # and none of them without an adapted figure to compare
    plain = with_reference(from_metrics(metrics, tmp_path / "timings").iloc[2:])
    assert PUBLISHED_ADAPTATION not in set(plain["config"])


def test_variants_are_shown_with_the_published_results_of_their_recipes(tmp_path: Path) -> None:
    write_results(tmp_path, "large-tied", valid=74.0, test=71.0)
    write_results(tmp_path, "small-gru", valid=125.0, test=119.5)
    table = with_reference(from_metrics(tmp_path / "metrics", tmp_path / "timings"))
    table = table.set_index(["config", "run"])
    large = table.loc["large-tied"]
    assert large.loc["pytorch/examples word_language_model --tied", "test"] == 72.30
    assert large.loc["pytorch/examples word_language_model", "test"] == 77.42  # untied
    assert large.loc["variational LSTM (Gal & Ghahramani 2016)", "test"] == 75.2
    assert large.loc["paper (Zaremba et al. 2014)", "test"] == 78.4
    # the deltas are against the 2014 model of the same size
    assert large.loc["metrics/large-tied", "Δtest vs paper (ppl)"] == pytest.approx(71.0 - 78.4)
    gru = table.loc["small-gru"]
    assert set(gru.index) == {"metrics/small-gru", "paper (Zaremba et al. 2014)"}
    assert gru.loc["metrics/small-gru", "Δtest vs paper (ppl)"] == pytest.approx(5.0)


def test_command_writes_markdown_and_csv(params_file: Path, tmp_path: Path, monkeypatch) -> None:
    write_results(tmp_path, "medium", valid=86.0, test=82.0)
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    args = ["compare", "--params", str(params_file), "--source", "metrics"]
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


def test_runs_from_the_mlflow_store(params_file: Path, tmp_path: Path, monkeypatch) -> None:
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("ptb-lm")
    for name, test in (("small-a", 115.0), ("small-b", 114.0)):
        with mlflow.start_run(run_name=name):
            mlflow.set_tags({"config": "small", "device_name": "cpu (2 threads)"})
            mlflow.log_metrics(
                {
                    "train_perplexity": 37.0,
                    "valid_perplexity": 121.0,
                    "test_perplexity": test,
                    "x/mean_words_per_sec": 5000.0,
                    "x/train_wall_time_s": 3600.0,
                }
            )
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    result = CliRunner().invoke(main, ["compare", "--params", str(params_file), "--format", "csv"])
    assert result.exit_code == 0, result.output
    table = pd.read_csv(io.StringIO(result.output))
    runs = table[table["run"].str.startswith("small-")]
    assert list(runs["run"]) == ["small-a", "small-b"]
    assert list(runs["Δtest vs paper (ppl)"].round(2)) == [0.5, -0.5]
    assert list(runs["Δtest vs paper (%)"].round(3)) == [
        round(50 / 114.5, 3),
        -round(50 / 114.5, 3),
    ]


def test_missing_store_is_a_one_line_error(params_file: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'none.db'}")
    result = CliRunner().invoke(main, ["compare", "--params", str(params_file)])
    assert result.exit_code == 1
    assert "no MLflow store" in result.output and "--source metrics" in result.output
    assert not (tmp_path / "none.db").exists()


def test_seeded_runs_get_params_columns_and_a_mean_and_std_row(
    params_file: Path, tmp_path: Path, monkeypatch
) -> None:
    """Three seeds of one config (one logged after new keys came), one run with another hidden
    size, in a real store."""
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("ptb-lm")
    runs = [  # (seed, hidden_size, train, valid, test)
        (1, 200, 40.0, 120.0, 115.0),
        (2, 200, 41.0, 122.0, 116.0),
        (3, 200, 45.0, 127.0, 120.0),
        (4, 200, 50.0, 130.0, None),  # failed before evaluation: listed, not averaged
        (1, 300, 30.0, 110.0, 105.0),
    ]
    for seed, hidden, train, valid, test in runs:
        with mlflow.start_run(run_name=f"h{hidden}-s{seed}"):
            mlflow.set_tags({"config": "small", "device_name": "cpu (2 threads)"})
            mlflow.log_params({"config": "small", "hidden_size": hidden, "train.seed": seed,
                               "num_layers": 2})  # fmt: skip
            if seed == 3:  # logged after these keys came: their defaults, as the others had
                mlflow.log_params({"cell": "lstm", "train.nproc_per_node": 1})
            for epoch, factor in ((1, 2.0), (2, 1.0)):  # the latest epoch is the final value
                mlflow.log_metrics(
                    {"train_perplexity": train * factor, "valid_perplexity": valid * factor},
                    step=epoch,
                )
            if test is not None:
                mlflow.log_metric("test_perplexity", test)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    result = CliRunner().invoke(main, ["compare", "--params", str(params_file), "--format", "csv"])
    assert result.exit_code == 0, result.output
    table = pd.read_csv(io.StringIO(result.output), dtype={"train.seed": str})
    assert {"hidden_size", "train.seed", "n", "sd test"} <= set(table.columns)
    assert "num_layers" not in table.columns  # the same in every run
    ours = table[~table["run"].isin(REFERENCE)].reset_index(drop=True)
    assert list(ours["run"]) == [
        "h200-s1", "h200-s2", "h200-s3", "mean of 3 runs", "h200-s4", "h300-s1"
    ]  # fmt: skip
    summary = ours.iloc[3]
    assert summary["n"] == 3 and summary["train.seed"] == "1,2,3"
    assert summary["hidden_size"] == 200
    for split, values in (("train", [40, 41, 45]), ("valid", [120, 122, 127]),
                          ("test", [115, 116, 120])):  # fmt: skip
        assert summary[split] == pytest.approx(statistics.mean(values))
        assert summary[f"sd {split}"] == pytest.approx(statistics.stdev(values))
    assert ours.iloc[5]["n"] == 1 and pd.isna(ours.iloc[5]["sd test"])

    markdown = CliRunner().invoke(
        main, ["compare", "--params", str(params_file), "--format", "markdown"]
    )
    assert "| mean of 3 runs " in markdown.output and "| 1,2,3 " in markdown.output
    assert "Δtest vs paper (ppl)" in markdown.output and "Δtest vs paper (%)" in markdown.output


def write_run(folder: Path, valid: float, test: float) -> None:
    """One kept run: the train.json and eval.json a run writes under metrics/<config>/."""
    write_json(folder / "train.json", {"train_perplexity": 40.0, "valid_perplexity": valid})
    write_json(folder / "eval.json", {"test_perplexity": test})


def test_seeds_command_summarizes_run_folders_and_compare_shows_it(
    params_file: Path, tmp_path: Path, monkeypatch
):
    """`ptblm seeds` over three kept runs writes metrics/<config>/seeds.json (n, mean, sd);
    `compare --source metrics` shows it as a row, and `--plot` draws it with an error bar."""
    tests = {"1": 113.0, "2": 112.0, "3": 115.5}
    for seed, test in tests.items():
        write_run(tmp_path / f"small-seed{seed}", valid=120.0 + int(seed), test=test)
    write_run(tmp_path / "run-a", valid=120.0, test=113.0)
    write_results(tmp_path, "small", valid=121.0, test=113.0)
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    result = runner.invoke(main, ["seeds", "--config", "small", "small-seed1", "run-a"])
    assert result.exit_code == 1 and "run-a: not named <config>-seed<N>" in result.output
    assert not (tmp_path / "metrics" / "small" / "seeds.json").exists()
    result = runner.invoke(main, ["seeds", "--config", "small", *(f"small-seed{s}" for s in tests)])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "metrics" / "small" / "seeds.json").read_text())
    assert summary["n"] == 3 and list(summary["seeds"]) == ["1", "2", "3"]
    assert summary["test"]["mean"] == pytest.approx(statistics.mean(tests.values()))
    assert summary["test"]["sd"] == pytest.approx(statistics.stdev(tests.values()))
    assert "small: n=3  test 113.50 ± 1.80" in result.output

    args = ["compare", "--params", str(params_file), "--source", "metrics", "--format", "csv"]
    result = runner.invoke(main, [*args, "--plot", "compare.png"])
    assert result.exit_code == 0, result.output
    table = pd.read_csv(io.StringIO(result.output)).set_index("run")
    row = table.loc["metrics/small/seeds.json: mean of 3 seeds"]
    assert row["n"] == 3 and row["sd test"] == pytest.approx(statistics.stdev(tests.values()))
    assert (tmp_path / "compare.png").read_bytes().startswith(b"\x89PNG")


def test_seeds_command_names_a_run_that_was_not_evaluated(tmp_path: Path) -> None:
    folder = tmp_path / "small-seed1"
    write_run(folder, valid=121.0, test=113.0)
    (folder / "eval.json").unlink()
    result = CliRunner().invoke(
        main, ["seeds", "--config", "small", str(folder), "--output", str(tmp_path / "s.json")]
    )
    assert result.exit_code == 1
    assert "small-seed1" in result.output and "train and evaluate that seed" in result.output
    assert not (tmp_path / "s.json").exists()  # nothing written
