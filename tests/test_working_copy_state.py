"""The unit tests read the project's state (params.yaml, metrics/, dvc.lock) from HEAD, never
from the working copy: after the README's own `dvc exp run -S model=test` (or a sweep) the
working copy holds `model: test`, other metrics and another lock, and `pytest -m "not e2e"`
must pass all the same."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import yaml
from conftest import PROJECT_ROOT, git, run, tool_env

# The modules that read the project's params or committed results (the ones that did read the
# working copy's, and failed after `dvc exp run -S model=test`).
READERS = (
    "tests/test_config.py",
    "tests/test_distributed.py::test_a_batch_that_does_not_split_over_the_processes_is_a_params_error",
    "tests/test_compare.py",
    "tests/test_ci_layout.py::test_one_metrics_folder_per_config_listed_whole",
)


def dirty_like_after_a_run(repo: Path) -> None:
    """What `dvc exp run -S model=test`, then a queued variant, leave in the working copy."""
    params = yaml.safe_load((repo / "params.yaml").read_text(encoding="utf-8"))
    params["model"] = "test"
    params["models"]["small"]["batch_size"] = 21  # a -S that was never committed
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    eval_json = repo / "metrics" / "test" / "eval.json"
    moved = {**json.loads(eval_json.read_text(encoding="utf-8")), "test_perplexity": 1.5}
    eval_json.write_text(json.dumps(moved), encoding="utf-8")
    extra = repo / "metrics" / "medium-tied"
    extra.mkdir()
    (extra / "train.json").write_text('{"config": "medium-tied"}', encoding="utf-8")
    (repo / "dvc.lock").write_text("schema: '2.0'\nstages: {}\n", encoding="utf-8")


@pytest.mark.e2e  # runs pytest in a clone: seconds, not milliseconds
def test_unit_tests_pass_with_a_working_copy_a_run_changed(tmp_path: Path) -> None:
    repo = tmp_path / "clone"
    run(["git", "clone", "-q", str(PROJECT_ROOT), str(repo)], tmp_path)
    # this checkout's tests and code (committed or not), the clone's committed state
    for folder in ("tests", "src"):
        shutil.rmtree(repo / folder)
        shutil.copytree(
            PROJECT_ROOT / folder, repo / folder, ignore=shutil.ignore_patterns("__pycache__")
        )
    git(repo, "add", "-A")
    git(
        repo,
        "-c",
        "user.name=t",
        "-c",
        "user.email=t@t.invalid",
        "commit",
        "-qnm",
        "x",
        "--allow-empty",
    )
    dirty_like_after_a_run(repo)
    args = [sys.executable, "-m", "pytest", "-n", "0", "-q", "-p", "no:cacheprovider"]
    args += ["-m", "not e2e", *READERS]
    done = run(args, repo, env=tool_env(repo), check=False, timeout=600)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
