"""benchmarks/plain_run.py: the plain loop trained to the end and compared with ptblm's run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import PROJECT_ROOT, kill_after_epoch, run, tiny_workdir, tool_env

pytestmark = pytest.mark.e2e  # real training processes

PLAIN_RUN = PROJECT_ROOT / "benchmarks" / "plain_run.py"


def _plain_run(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(PLAIN_RUN), "--device", "cpu", "--out", "out", *args]
    return run(cmd, root, env=tool_env(), check=check)


def test_plain_loop_lands_where_ours_does_and_bad_input_fails_first(tmp_path):
    # Dropout on: on CPU the plain loop draws ours' masks, so the two agree to float rounding
    # (~1e-8 here) until the third epoch's sudden drop in perplexity amplifies that rounding.
    root = tiny_workdir(tmp_path, 2)
    for stage in ("train", "evaluate"):
        run([sys.executable, str(PROJECT_ROOT / "stages" / f"{stage}.py")], root, env=tool_env())

    missing = _plain_run(root, "--config", "tiny", "--ours", "metrics/small", check=False)
    assert missing.returncode == 2
    assert "--ours" in missing.stderr and "metrics/small" in missing.stderr
    unknown = _plain_run(root, "--config", "huge", check=False)
    assert unknown.returncode == 2 and "'huge' is not a config" in unknown.stderr
    assert not (root / "out").exists() and not (root / "checkpoints" / "plain-tiny").exists()

    done = _plain_run(root, "--config", "tiny", "--ours", "metrics/tiny")
    assert "valid and test within 0.5% of the plain loop: yes" in done.stdout
    report = json.loads((root / "out" / "plain-tiny.json").read_text())
    assert [r["epoch"] for r in report["plain"]["history"]] == [1, 2]
    comparison = report["comparison"]
    for key in ("train_perplexity", "valid_perplexity", "test_perplexity"):
        assert abs(comparison[key]["relative_difference"]) < 1e-5, (key, comparison[key])
    ours = json.loads((root / "metrics" / "tiny" / "eval.json").read_text())
    assert comparison["test_perplexity"]["ours"] == ours["test_perplexity"]
    assert not (root / "checkpoints" / "plain-tiny" / "last.pt").exists()


def test_killed_plain_run_resumes_and_matches_an_uninterrupted_one(tmp_path):
    # dropout on: resuming must restore the RNG stream too; killed after epoch 1 of 3
    straight = tiny_workdir(tmp_path / "straight", 3)
    _plain_run(straight, "--config", "tiny")

    killed = tiny_workdir(tmp_path / "killed", 3)
    folder = killed / "checkpoints" / "plain-tiny"
    cmd = [sys.executable, str(PLAIN_RUN), "--device", "cpu", "--out", "out", "--config", "tiny"]
    kill_after_epoch(cmd, killed, folder, epoch=1)
    assert not (killed / "out").exists()

    rerun = _plain_run(killed, "--config", "tiny")
    assert "resuming plain tiny after epoch" in rerun.stderr + rerun.stdout

    def learned(root: Path) -> dict:
        plain = json.loads((root / "out" / "plain-tiny.json").read_text())["plain"]
        for record in plain["history"]:
            del record["words_per_sec"], record["train_seconds"]
        return {k: v for k, v in plain.items() if k != "training_time_s"}

    assert learned(killed) == learned(straight)  # bit-identical on CPU
