"""Switching or mistyping `model` with the real `dvc exp run`, on a tiny project: nothing the
user had vanishes without a way back, and every error names the configs."""

from __future__ import annotations

import sys

import pytest
from conftest import copy_project, dvc, run, tool_env

pytestmark = pytest.mark.e2e

MODEL_FILES = ("models/tiny/model.pt", "models/tiny/mlflow_run.json")


@pytest.fixture
def trained(tiny_template, tmp_path):
    """A copy of the tiny project with config `tiny` trained by `dvc exp run` (so DVC linked
    its outputs into the workspace, as after any run), and its model files' bytes."""
    repo = copy_project(tiny_template, tmp_path)
    env = tool_env(repo)
    dvc(repo, "exp", "run", "-S", "tracking.enabled=false", env=env)
    return repo, env, {name: (repo / name).read_bytes() for name in MODEL_FILES}


def ptblm(repo, *args: str, check: bool = False):
    return run([sys.executable, "-m", "ptblm", *args], repo, check=check)


def test_a_switch_that_fails_at_check_keeps_the_last_model(trained):
    """DVC removes the old selection's model before any stage runs; check puts it back."""
    repo, env, before = trained
    sets = ("-S", "model=small", "-S", "models.small.num_steps=100000")
    result = dvc(repo, "exp", "run", *sets, env=env, check=False)
    assert result.returncode != 0
    assert "shorter than one window" in result.stderr
    assert "Running stage 'train'" not in result.stdout
    assert {name: (repo / name).read_bytes() for name in MODEL_FILES} == before
    assert "restored models/tiny/model.pt from the DVC cache" in result.stderr
    assert "keeps the values `dvc exp run -S` set" in result.stderr  # model: small stays
    assert not (repo / "models" / "small").exists()  # DVC's empty folder, removed
    assert ptblm(repo, "generate", "--model", "tiny", "--words", "3").returncode == 0


def test_a_mistyped_model_says_where_the_model_is_and_the_command_brings_it_back(trained):
    """A `model` no config has fails in DVC, before any ptblm code runs, after DVC removed
    the model from the workspace (measured: docs/pipeline.md); generate says where it is."""
    repo, env, before = trained
    result = dvc(repo, "exp", "run", "-S", "model=smal", env=env, check=False)
    assert result.returncode != 0
    assert "Parameters 'models.smal' are missing" in result.stderr
    assert not (repo / MODEL_FILES[0]).exists()  # DVC's doing: see the docstring

    missing = ptblm(repo, "generate", "--model", "tiny")
    assert missing.returncode == 1
    error = missing.stderr.strip().splitlines()[-1]
    assert "not in the workspace; it is in the DVC cache, from experiment " in error
    assert "configs: small, medium, large, test" in error and error.endswith(", tiny")
    command = error.split(": ")[-2].split(";")[0]  # "... experiment <name>: <command>; configs"
    assert command.startswith("dvc exp apply ")
    dvc(repo, *command.split()[1:], env=env)
    assert {name: (repo / name).read_bytes() for name in MODEL_FILES} == before
    assert ptblm(repo, "generate", "--model", "tiny", "--words", "3").returncode == 0


def test_a_model_never_trained_or_no_config_says_so_with_the_configs(tiny_template, tmp_path):
    repo = copy_project(tiny_template, tmp_path)
    unknown = ptblm(repo, "generate", "--model", "nonexistent")
    assert unknown.returncode == 1
    assert "'nonexistent' is not a config; configs: small, medium, large" in unknown.stderr
    untrained = ptblm(repo, "generate", "--model", "test")
    assert untrained.returncode == 1
    assert "never trained here (no dvc.lock records it): dvc exp run -S model=test" in (
        untrained.stderr
    )


def test_an_empty_params_file_is_named_and_called_empty(tiny_template, tmp_path):
    repo = copy_project(tiny_template, tmp_path)
    (repo / "params.yaml").write_text("")
    for command in (["check"], ["generate"], ["train"]):
        result = ptblm(repo, *command)
        assert result.returncode == 1, command
        assert "Error: params: params.yaml is empty;" in result.stderr, command
        assert len(result.stderr.strip().splitlines()) == 1, command


def test_evaluate_without_the_selected_model_names_the_checkout_that_restores_it(trained):
    """A model deleted by hand (or never pulled): the selected config's own dvc.lock has it."""
    repo, env, before = trained
    (repo / MODEL_FILES[0]).unlink()
    result = ptblm(repo, "evaluate")
    assert result.returncode == 1
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("Error: models/tiny/model.pt: not in the workspace; it is in the DVC")
    assert "from this workspace's dvc.lock: dvc checkout models/tiny/model.pt;" in error
    dvc(repo, "checkout", "models/tiny/model.pt", env=env)
    assert (repo / MODEL_FILES[0]).read_bytes() == before[MODEL_FILES[0]]
