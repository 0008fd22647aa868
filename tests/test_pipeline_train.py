"""`dvc exp run -S model=test` end to end on the real archive, in a temporary repo."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import yaml
from conftest import dvc, make_project, tool_env

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def trained(tmp_path_factory, shared_archive):
    """One real run of the whole pipeline on the real archive, the `test` config in windows
    of 35 steps (17x fewer than its 2: seconds, not a minute; .ci/run trains it as it is);
    shared by the tests here."""
    repo = make_project(tmp_path_factory.mktemp("e2e"))
    env = tool_env(repo, PTBLM_DATA_SOURCE=str(shared_archive))
    sets = ("model=test", "models.test.num_steps=35", "tracking.enabled=false")
    result = dvc(repo, "exp", "run", *(a for s in sets for a in ("-S", s)), env=env)
    return repo, env, result


def test_exp_run_trains_and_evaluates_the_selected_config(trained):
    repo, _, result = trained
    assert "Running stage 'train'" in result.stdout
    assert "Running stage 'evaluate'" in result.stdout
    assert yaml.safe_load((repo / "params.yaml").read_text())["model"] == "test"
    out = repo / "metrics" / "test"
    train = json.loads((out / "train.json").read_text())
    evaluation = json.loads((out / "eval.json").read_text())
    assert train["epochs"] == 1 and train["device"] == "cpu"
    # the tiny model barely learns: far better than uniform (10,000), far worse than small
    assert 200 < evaluation["test_perplexity"] < 2000
    assert evaluation["batch_size"] == 1
    plots = repo / "plots" / "test"
    history = (plots / "history.csv").read_text().splitlines()
    assert history[0] == "epoch,lr,train_perplexity,valid_perplexity" and len(history) == 2
    assert (plots / "learning_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in out.iterdir()) == ["adapt.json", "eval.json", "train.json"]
    speed = json.loads((repo / "timings" / "test" / "speed.json").read_text())
    assert speed["words_per_sec"] > 0 and speed["wall_time_s"] > 0
    model = torch.load(repo / "models" / "test" / "model.pt", weights_only=True)
    assert model["config_name"] == "test" and model["config"]["hidden_size"] == 2
    assert not list((repo / "checkpoints").glob("test/*.pt"))  # a finished run removes its own


def test_exp_show_lists_config_hyperparameters_and_perplexities(trained):
    repo, env, _ = trained
    shown = json.loads(dvc(repo, "exp", "show", "--json", env=env).stdout)
    workspace = next(rev for rev in shown if rev["rev"] == "workspace")
    data = workspace["data"]
    params = data["params"]["params.yaml"]["data"]
    assert params["model"] == "test"
    assert params["models"]["test"]["hidden_size"] == 2
    metrics = data["metrics"]
    assert metrics["metrics/test/eval.json"]["data"]["test_perplexity"] > 0
    assert metrics["metrics/test/train.json"]["data"]["valid_perplexity"] > 0
    table = dvc(repo, "exp", "show", "--md", env=env).stdout
    assert "test_perplexity" in table and "models.test.hidden_size" in table


def test_variant_switches_set_with_exp_run_train_and_evaluate(trained):
    """GRU, tied weights and variational dropout switched on from the command line with a
    plain `-S` (every config names every key): train and evaluate rerun, the data stages
    do not."""
    repo, env, _ = trained
    switches = [
        "model=test",
        "models.test.cell=gru",
        "models.test.tie_weights=true",
        "models.test.dropout=variational",
        "models.test.keep_prob=0.5",  # so the variational masks do something
        "models.test.num_layers=2",  # and one sits between layers
        "models.test.num_steps=35",  # 17x fewer windows than test's 2: seconds, not a minute
        "tracking.enabled=false",
    ]
    result = dvc(repo, "exp", "run", *(a for s in switches for a in ("-S", s)), env=env)
    assert "Running stage 'train'" in result.stdout
    assert "Running stage 'evaluate'" in result.stdout
    assert "Running stage 'prepare'" not in result.stdout
    saved = torch.load(repo / "models" / "test" / "model.pt", weights_only=True)
    assert {k: saved["config"][k] for k in ("cell", "tie_weights", "dropout", "num_layers")} == {
        "cell": "gru",
        "tie_weights": True,
        "dropout": "variational",
        "num_layers": 2,
    }
    assert "embedding.weight" not in saved["state_dict"]  # tied: the softmax's, stored once
    assert "gru.1.weight_hh_l0" in saved["state_dict"]  # variational: one GRU per layer
    evaluation = json.loads((repo / "metrics" / "test" / "eval.json").read_text())
    assert 200 < evaluation["test_perplexity"] < 3000
    assert "up to date" in dvc(repo, "status", env=env).stdout


def test_config_names_with_a_dash_resolve_in_the_stages(trained):
    """`models.${model}` and the output paths take variant names like test-variants."""
    repo, env, _ = trained
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["model"] = "test-variants"
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    status = dvc(repo, "status", env=env).stdout
    assert "models.test-variants" in status, status
    stages = dvc(repo, "stage", "list", env=env).stdout
    assert "models/test-variants/model.pt" in stages and "metrics/test-variants/eval.json" in stages
    params["model"] = "test"
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def test_only_the_selected_configs_params_are_tracked(trained):
    repo, env, _ = trained
    assert "up to date" in dvc(repo, "status", env=env).stdout
    original = (repo / "params.yaml").read_text()
    params = yaml.safe_load(original)
    try:
        params["models"]["large"]["hidden_size"] = 1234
        (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        assert "up to date" in dvc(repo, "status", env=env).stdout
        params["models"]["test"]["hidden_size"] = 3
        (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        status = dvc(repo, "status", env=env).stdout
        assert "train:" in status and "models.test" in status
    finally:
        (repo / "params.yaml").write_text(original)  # the module's other tests share the repo


@pytest.fixture
def trained_copy(trained, tmp_path):
    """A copy of the trained project (git, DVC cache and all) that a test may change."""
    repo, env, _ = trained
    copy = tmp_path / "project"
    shutil.copytree(repo, copy, symlinks=True)
    return copy, tool_env(copy, PTBLM_DATA_SOURCE=env["PTBLM_DATA_SOURCE"])


def _stage_status(repo, env) -> str:
    return dvc(repo, "status", env=env).stdout


def test_a_change_to_code_a_stage_runs_reruns_it_and_no_other_code_does(trained_copy):
    repo, env = trained_copy
    assert "up to date" in _stage_status(repo, env)
    compare = repo / "src" / "ptblm" / "compare.py"
    compare.write_text(compare.read_text() + "\n# a change to the comparison tool\n")
    assert "up to date" in _stage_status(repo, env)
    data = repo / "src" / "ptblm" / "data.py"
    data.write_text(data.read_text() + "\n# a change to the batching\n")
    status = _stage_status(repo, env)
    assert "train:" in status and "evaluate:" in status and "src/ptblm/data.py" in status


def _results(repo) -> dict[str, bytes]:
    folders = ("models", "metrics", "plots", "timings")
    paths = [p for folder in folders for p in repo.glob(f"{folder}/test/*")]
    return {str(p.relative_to(repo)): p.read_bytes() for p in paths}


def test_a_bad_param_costs_nothing(trained_copy):
    """DVC deletes a stage's outputs before running it; the check stage fails first."""
    repo, env = trained_copy
    before = _results(repo)
    assert {"models/test/model.pt", "models/test/mlflow_run.json", "metrics/test/eval.json"} <= set(
        before
    )
    params_text = (repo / "params.yaml").read_text()
    bad_params = {
        "train.precision=fp16": "train.precision = 'fp16' is not allowed",
        "evaluate.batch_size=0": "evaluate.batch_size = 0 is not allowed",
        "models.test.num_steps=100000": "shorter than one window",
    }
    for bad, message in bad_params.items():
        result = dvc(repo, "exp", "run", "-S", bad, env=env, check=False)
        assert result.returncode != 0, bad
        assert message in result.stderr, (bad, result.stderr[-2000:])
        assert "Running stage 'train'" not in result.stdout, bad
        assert _results(repo) == before, bad
        (repo / "params.yaml").write_text(params_text)  # a failed exp run leaves the typo


def test_evaluate_alone_without_a_model_keeps_the_committed_score(trained_copy):
    """A fresh clone has eval.json (committed) but no model (never pulled)."""
    repo, env = trained_copy
    (repo / "models" / "test" / "model.pt").unlink()
    eval_json = (repo / "metrics" / "test" / "eval.json").read_bytes()
    result = dvc(repo, "repro", "-s", "evaluate", env=env, check=False)
    assert result.returncode != 0
    assert "models/test/model.pt" in result.stderr
    assert (repo / "metrics" / "test" / "eval.json").read_bytes() == eval_json
