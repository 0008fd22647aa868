"""The command line: `ptblm --help` lists every stage, and each stage script has its own help."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
from conftest import PROJECT_ROOT, run, tool_env

STAGES = ("fetch", "extract", "prepare", "check", "train", "evaluate")


def test_ptblm_help_lists_the_stages(tmp_path: Path) -> None:
    exe = shutil.which("ptblm", path=str(Path(sys.executable).parent))
    assert exe, "the ptblm entry point is not installed (pip install -e .)"
    result = run([exe, "--help"], cwd=tmp_path, env=tool_env(PROJECT_ROOT))
    commands = result.stdout.split("Commands:")[1].split()
    for stage in STAGES:
        assert stage in commands
    assert "dvc repro" in result.stdout


@pytest.mark.parametrize(
    ("stage", "options"),
    [
        ("fetch", ["--params", "--out", "PTBLM_DATA_SOURCE"]),
        ("extract", ["--archive", "--out", "MD5"]),
        ("prepare", ["--text-dir", "--out", "--metrics"]),
        ("train", ["--params", "--model", "--tracking / --no-tracking"]),
        ("check", ["--params", "--model", "data/checked"]),
        ("evaluate", ["--params", "--model", "--tracking / --no-tracking"]),
    ],
)
def test_each_stage_script_has_help(tmp_path: Path, stage: str, options: list[str]) -> None:
    result = run(
        [sys.executable, str(PROJECT_ROOT / "stages" / f"{stage}.py"), "--help"],
        cwd=tmp_path,
        env=tool_env(PROJECT_ROOT),
    )
    assert result.stdout.startswith("Usage: ")
    for option in options:
        assert option in result.stdout
    assert list(tmp_path.iterdir()) == []  # help does no work


def test_unknown_command_fails(tmp_path: Path) -> None:
    """Through `python -m ptblm`, as torchrun starts it."""
    result = run(
        [sys.executable, "-m", "ptblm", "frobnicate"],
        cwd=tmp_path,
        env=tool_env(PROJECT_ROOT),
        check=False,
    )
    assert result.returncode == 2
    assert "No such command 'frobnicate'" in result.stderr


def test_the_cli_imports_no_torch(tmp_path: Path) -> None:
    """So `ptblm --help` (and a typo's error) answers at once: each command imports what
    needs torch inside itself, when it runs."""
    result = run(
        [sys.executable, "-c", "import ptblm.cli, sys; print('torch' in sys.modules)"],
        cwd=tmp_path,
        env=tool_env(PROJECT_ROOT),
    )
    assert result.stdout.strip() == "False"
