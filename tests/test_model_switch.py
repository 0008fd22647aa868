"""Switching or mistyping `model` with the real `dvc exp run`, on a tiny project: nothing the
user had vanishes without a way back, and every error names the configs."""

from __future__ import annotations

import sys

import pytest
from conftest import copy_project, run

pytestmark = pytest.mark.e2e


def ptblm(repo, *args: str, check: bool = False):
    return run([sys.executable, "-m", "ptblm", *args], repo, check=check)


def test_an_empty_params_file_is_named_and_called_empty(tiny_template, tmp_path):
    repo = copy_project(tiny_template, tmp_path)
    (repo / "params.yaml").write_text("")
    for command in (["check"], ["generate"], ["train"]):
        result = ptblm(repo, *command)
        assert result.returncode == 1, command
        assert "Error: params: params.yaml is empty;" in result.stderr, command
        assert len(result.stderr.strip().splitlines()) == 1, command
