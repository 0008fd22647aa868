"""scripts/gpu_measure.sh, the one-call GPU measurement, run for real on CPU.

Its CUDA tests skip here and no GPU part is asked for, but the script's own logic runs:
preparing data from the archive, the params copy the runs read, the deadline, the
report of failed parts and the one archive the device tool brings back.
"""

from __future__ import annotations

import json
import shutil
import sys
import tarfile
from pathlib import Path

import pytest
import yaml
from conftest import PROJECT_ROOT, make_project, run, tool_env, write_corpus

pytestmark = pytest.mark.e2e  # real training processes


def gpu_script(repo: Path, out: Path, *parts: str, **env: str):
    environment = tool_env(repo, OUT=str(out), PYTHON=sys.executable, PTBLM_COMMIT="abc1234", **env)
    return run(["bash", "scripts/gpu_measure.sh", *parts], repo, env=environment, check=False)


def members(archive: Path) -> dict[str, str]:
    """Every file in the archive, as text (a PNG's bytes come out garbled, not as an error)."""
    with tarfile.open(archive) as tar:
        files = [m for m in tar.getmembers() if m.isfile()]
        return {m.name: tar.extractfile(m).read().decode(errors="replace") for m in files}


def test_gpu_script_prepares_data_packs_results_and_keeps_its_deadline(tmp_path, shared_archive):
    repo = make_project(tmp_path)
    for folder in ("scripts", "tests"):
        shutil.copytree(PROJECT_ROOT / folder, repo / folder, ignore=shutil.ignore_patterns("__*"))

    first = gpu_script(repo, tmp_path / "out1", "check", PTBLM_ARCHIVE=str(shared_archive))
    assert first.returncode == 0, first.stdout + first.stderr
    assert (repo / "data" / "prepared" / "train.npy").is_file()
    files = members(tmp_path / "out1" / "results.tar.gz")
    assert "skipped" in files["results/logs/check.log"]  # no CUDA here
    assert "commit abc1234; precision tf32" in files["results/logs/environment.txt"]
    assert files["results/logs/durations.txt"].startswith("check: ")
    params = yaml.safe_load(files["results/params-gpu.yaml"])
    assert params["train"]["precision"] == "tf32"
    assert params["tracking"]["enabled"] is False
    assert params["models"] == yaml.safe_load((repo / "params.yaml").read_text())["models"]

    late = gpu_script(repo, tmp_path / "out2", "check", "bench", DEADLINE_S="5")
    assert late.returncode == 1
    assert "check: skipped, deadline reached" in late.stdout
    assert "failed: check bench" in late.stderr
    assert (tmp_path / "out2" / "results.tar.gz").is_file()  # what ran is still packed

    unknown = gpu_script(repo, tmp_path / "out3", "huge", PRECISION="fp32")
    assert unknown.returncode == 1
    assert "unknown part: huge" in unknown.stderr
    params = yaml.safe_load((tmp_path / "out3" / "results" / "params-gpu.yaml").read_text())
    assert params["train"]["precision"] == "fp32"


def test_gpu_script_trains_ours_then_the_plain_loop_and_compares(tmp_path):
    repo = make_project(tmp_path)
    for folder in ("scripts", "tests", "benchmarks"):
        shutil.copytree(PROJECT_ROOT / folder, repo / folder, ignore=shutil.ignore_patterns("__*"))
    write_corpus(repo, train_tokens=20_000)  # data/prepared: seconds of `test`, not minutes

    out = tmp_path / "out"
    done = gpu_script(
        repo,
        out,
        "test",
        "adapt-test",
        "plain-test",
        "seeds-test",
        "test-variants",
        PRECISION="fp32",
        SEEDS="1 2",
    )
    assert done.returncode == 0, done.stdout + done.stderr
    files = members(out / "results.tar.gz")
    assert "results/metrics/test/eval.json" in files
    adapted = json.loads(files["results/metrics/test/adapt.json"])  # the adapt stage, no MLflow
    assert adapted["model_md5"] == json.loads(files["results/metrics/test/eval.json"])["model_md5"]
    assert "results/tuning/test/dynamic_grid.csv" in files
    assert "results/metrics/test-variants/eval.json" in files  # a variant config is a part too
    report = json.loads(files["results/plain/plain-test.json"])
    assert report["plain"]["precision"] == "fp32"
    assert report["comparison"]["within_tolerance"] is True  # no dropout in `test`
    assert "valid and test within 0.5%" in files["results/logs/plain-test.log"]
    assert not any(name.startswith("results/partial-") for name in files)  # nothing interrupted
    seeds = json.loads(files["results/seeds/test.json"])
    assert seeds["n"] == 2 and set(seeds["seeds"]) == {"1", "2"}
    tests = [seeds["seeds"][s]["test"] for s in ("1", "2")]
    assert tests[0] != tests[1]  # the seed reached training
    assert seeds["test"]["mean"] == pytest.approx(sum(tests) / 2)
    assert seeds["test"]["sd"] == pytest.approx(abs(tests[0] - tests[1]) / 2**0.5)
    assert "results/seeds/test-seed2/eval.json" in files
