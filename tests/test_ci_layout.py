"""`.ci/run` and the metrics layout it relies on: one committed folder per config, so a CI run
of the `test` config diffs against the committed metrics/test/ and leaves other configs alone."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import (
    committed_params,
    committed_tree,
    dvc,
    git,
    init_repo,
    make_project,
    run,
    tool_env,
)

ROOT = Path(__file__).resolve().parents[1]
CI_RUN = ROOT / ".ci" / "run"
README_TEST_CMD = (
    "python3 -m venv .venv && . .venv/bin/activate && "
    "pip install torch==2.13.0 -e '.[dev]' && pytest"
)


def load_ci_module(name: str):
    spec = importlib.util.spec_from_file_location(f"ci_{name}", ROOT / ".ci" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


check_metrics = load_ci_module("check_metrics")


# --- .ci/run ------------------------------------------------------------------------------


def ci_run_text() -> str:
    return CI_RUN.read_text(encoding="utf-8")


def test_ci_run_is_strict_bash():
    text = ci_run_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "\nset -euo pipefail\n" in text
    subprocess.run(["bash", "-n", str(CI_RUN)], check=True)


def test_ci_run_has_the_readme_test_command_in_one_variable():
    text = ci_run_text()
    definitions = re.findall(r'^README_TEST_CMD="(.*)"$', text, flags=re.M)
    assert definitions == [README_TEST_CMD]
    assert text.count(README_TEST_CMD) == 1
    assert 'eval "$README_TEST_CMD" || rc=$?' in text
    assert '"$rc" -eq 5' in text  # pytest's "no tests collected" is a failure


def test_readme_quick_start_has_the_test_command_verbatim():
    readme = ROOT / "README.md"
    assert readme.is_file(), "README.md is missing: its quick start must hold the test command"
    lines = [line.strip() for line in readme.read_text(encoding="utf-8").splitlines()]
    assert README_TEST_CMD in lines, (
        f"README.md's quick start must contain this line verbatim (as .ci/run runs it):\n"
        f"    {README_TEST_CMD}"
    )


def test_ci_run_sequence():
    text = ci_run_text()
    order = [
        "python3 .ci/check_metrics.py --rev HEAD",
        'eval "$README_TEST_CMD"',
        "ruff check .",
        "dvc exp run -S model=test",
        "dvc repro --force --single-item train evaluate",
        "python .ci/report.py --base HEAD",
    ]
    positions = [text.index(step) for step in order]
    assert positions == sorted(positions)
    assert 'PTBLM_DATA_SOURCE="${PTBLM_DATA_SOURCE:-../shared/data/simple-examples.tgz}"' in text
    assert 'echo "== phase: $PHASE took $took s"' in text
    assert "rm -rf .venv" in text  # CI=true: a fresh venv, installs from scratch


# --- metrics layout -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def dvc_yaml() -> dict:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def configs() -> set[str]:
    return set(committed_params()["models"])


def stage_metric_paths(dvc_yaml: dict) -> list[str]:
    return [
        next(iter(m)) if isinstance(m, dict) else m
        for stage in dvc_yaml["stages"].values()
        for m in stage.get("metrics", [])
    ]


def test_one_metrics_folder_per_config_listed_whole(dvc_yaml, configs):
    assert "metrics/${model}/train.json" in stage_metric_paths(dvc_yaml)
    assert "metrics/${model}/eval.json" in stage_metric_paths(dvc_yaml)
    assert "metrics/${model}/adapt.json" in stage_metric_paths(dvc_yaml)
    # The folders, not their files: a new config's results list themselves.
    assert dvc_yaml["metrics"] == ["metrics"]
    plots = {next(iter(p)) if isinstance(p, dict) else p: p for p in dvc_yaml["plots"]}
    assert "plots" in plots
    assert plots["plots"]["plots"]["y"] == ["train_perplexity", "valid_perplexity"]
    tracked = git(ROOT, "ls-tree", "-r", "--name-only", "HEAD", "metrics", "plots").split()
    committed = {
        Path(p).parts[1] for p in tracked if p.startswith("metrics/") and p.count("/") == 2
    }
    assert "test" in committed and committed <= configs
    for config in committed:
        files = {Path(p).name for p in tracked if p.startswith(f"metrics/{config}/")}
        assert {"train.json", "eval.json"} <= files <= {"train.json", "eval.json", "seeds.json",
                                                         "adapt.json"}  # fmt: skip
        assert f"plots/{config}/history.csv" in tracked
        # timings/<config>/speed.json only where the run's speed was a measurement (a run
        # that shared the cores with others commits none: docs/reproduction.md)


def test_speed_is_not_a_dvc_metric_nor_a_plot(dvc_yaml):
    # Timings change every run; as metrics they would make an unchanged model show a diff.
    outs = [
        next(iter(o)) if isinstance(o, dict) else o for o in dvc_yaml["stages"]["train"]["outs"]
    ]
    assert "timings/${model}/speed.json" in outs
    for listed in dvc_yaml["metrics"] + [next(iter(p)) for p in dvc_yaml["plots"]]:
        assert not "timings/${model}/speed.json".startswith(listed.rstrip("/") + "/"), listed
    assert "speed.json" not in " ".join(stage_metric_paths(dvc_yaml))


def test_committed_metric_files_are_well_formed():
    if subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True).returncode:
        pytest.skip("not a git checkout with commits")
    assert check_metrics.main(["--rev", "HEAD", "--root", str(ROOT)]) == 0


# --- .ci/check_metrics.py -----------------------------------------------------------------

GOOD_TRAIN = {
    "config": "test",
    "train_perplexity": 635.7,
    "valid_perplexity": 500.6,
    "epochs": 1,
    "device": "cpu",
}
GOOD_EVAL = {"config": "test", "test_perplexity": 476.3, "valid_perplexity": 500.6}


@pytest.mark.parametrize(
    ("path", "data", "expected"),
    [
        ("metrics/test/train.json", GOOD_TRAIN, None),
        ("metrics/test/eval.json", GOOD_EVAL, None),
        ("metrics/prepare.json", {"vocab_size": 10000}, None),
        ("metrics/test/train.json", "{not json", "not valid JSON"),
        ("metrics/test/eval.json", [1, 2], "not a JSON object"),
        ("metrics/test/eval.json", {**GOOD_EVAL, "test_perplexity": "476"}, "not a number"),
        ("metrics/test/eval.json", {**GOOD_EVAL, "test_perplexity": True}, "not a number"),
        ("metrics/test/eval.json", {**GOOD_EVAL, "test_perplexity": 0.5}, "finite perplexity"),
        ("metrics/test/eval.json", {"config": "test", "valid_perplexity": 9}, "missing"),
        ("metrics/small/train.json", GOOD_TRAIN, "'config' is 'test'"),
    ],
)
def test_metric_file_problems(path, data, expected):
    text = data if isinstance(data, str) else json.dumps(data)
    found = check_metrics.problems(path, text)
    if expected is None:
        assert found == []
    else:
        assert any(expected in p for p in found), found


def test_nan_perplexity_is_malformed():
    found = check_metrics.problems("metrics/test/eval.json", '{"test_perplexity": NaN}')
    assert any("finite" in p for p in found)


def metrics_repo(tmp_path: Path, files: dict[str, str]) -> Path:
    repo = tmp_path / "repo"
    for name, text in files.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(text, encoding="utf-8")
    init_repo(repo, "metrics")
    return repo


def test_check_metrics_fails_naming_the_malformed_committed_file(tmp_path):
    repo = metrics_repo(
        tmp_path,
        {
            "dvc.yaml": "metrics:\n  - metrics/test/train.json\n  - metrics/test/eval.json\n",
            "metrics/test/train.json": json.dumps(GOOD_TRAIN),
            "metrics/test/eval.json": '{"test_perplexity": ',
        },
    )
    script = ROOT / ".ci" / "check_metrics.py"
    result = run([sys.executable, str(script)], repo, check=False)
    assert result.returncode == 1
    assert "malformed metric file metrics/test/eval.json" in result.stderr
    # The workspace copy being fixed does not hide the committed breakage.
    (repo / "metrics/test/eval.json").write_text(json.dumps(GOOD_EVAL), encoding="utf-8")
    assert run([sys.executable, str(script)], repo, check=False).returncode == 1
    assert run([sys.executable, str(script), "--workspace"], repo).returncode == 0


def test_check_metrics_refuses_a_non_metric_file_under_metrics(tmp_path):
    repo = metrics_repo(
        tmp_path,
        {
            "dvc.yaml": "metrics:\n  - metrics\n",
            "metrics/test/train.json": json.dumps(GOOD_TRAIN),
            "metrics/test/eval.json": json.dumps(GOOD_EVAL),
        },
    )
    script = ROOT / ".ci" / "check_metrics.py"
    assert run([sys.executable, str(script)], repo).returncode == 0
    (repo / "metrics/test/history.csv").write_text("epoch,lr\n1,1.0\n", encoding="utf-8")
    result = run([sys.executable, str(script), "--workspace"], repo, check=False)
    assert result.returncode == 1
    assert "metrics/test/history.csv (workspace) is not a metric file" in result.stderr
    (repo / "metrics/test/history.csv").unlink()
    (repo / "metrics/test/speed.json").write_text('{"words_per_sec": 1.0}', encoding="utf-8")
    result = run([sys.executable, str(script), "--workspace"], repo, check=False)
    assert result.returncode == 1
    assert "metrics/test/speed.json (workspace) is not a metric file" in result.stderr


# --- what a diff shows ----------------------------------------------------------------------


def report(repo: Path) -> str:
    result = run(
        [sys.executable, str(ROOT / ".ci" / "report.py"), "--base", "HEAD", "--out", "out"],
        repo,
        env=tool_env(),
    )
    return result.stdout


def test_diff_shows_exactly_what_moved(tmp_path):
    """Unchanged metrics diff clean; a changed test config shows only its own rows."""
    small_train = {**GOOD_TRAIN, "config": "small", "train_perplexity": 40.5}
    small_eval = {**GOOD_EVAL, "config": "small", "test_perplexity": 114.2}
    repo = metrics_repo(
        tmp_path,
        {
            "dvc.yaml": "metrics:\n"
            + "".join(
                f"  - metrics/{c}/{f}.json\n" for c in ("small", "test") for f in ("train", "eval")
            ),
            "metrics/small/train.json": json.dumps(small_train),
            "metrics/small/eval.json": json.dumps(small_eval),
            "metrics/test/train.json": json.dumps(GOOD_TRAIN),
            "metrics/test/eval.json": json.dumps(GOOD_EVAL),
        },
    )
    run([sys.executable, "-m", "dvc", "init", "-q"], repo, env=tool_env())
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "dvc init")

    # Rewritten byte-identically, as a deterministic CPU re-run does: nothing to show.
    (repo / "metrics/test/eval.json").write_text(json.dumps(GOOD_EVAL), encoding="utf-8")
    out = report(repo)
    assert "No metric changed" in out
    diff = run(
        [sys.executable, "-m", "dvc", "metrics", "diff", "HEAD", "--md"], repo, env=tool_env()
    )
    assert [line for line in diff.stdout.splitlines() if line.startswith("| metrics/")] == []

    moved = {**GOOD_EVAL, "test_perplexity": 470.0}
    (repo / "metrics/test/eval.json").write_text(json.dumps(moved), encoding="utf-8")
    out = report(repo)
    rows = [line for line in out.splitlines() if line.startswith("| metrics/")]
    assert len(rows) == 1, out
    assert rows[0].split("|")[1].strip() == "metrics/test/eval.json"
    assert "test_perplexity" in rows[0] and "476.3" in rows[0] and "470" in rows[0]
    assert (repo / "out" / "report.md").read_text(encoding="utf-8") in out + "\n"


report_module = load_ci_module("report")


@pytest.mark.parametrize(
    ("old", "new", "rounding"),
    [
        (632.8732, 632.8733, True),  # AMD Zen 3 vs Intel Xeon AVX-512, the test config
        (470.491, 470.4909, True),
        (100.0, 100.0001, True),  # 1e-6 relative: the edge
        (100.0, 100.0002, False),
        (476.3038, 470.4909, False),  # the fast path: a real change
        (1, 2, False),  # epochs
        (None, 470.0, False),  # a new metric
        ("cpu", "cuda", False),
    ],
)
def test_within_rounding(old, new, rounding):
    assert report_module.within_rounding({"old": old, "new": new}) is rounding


def rounding_repo(tmp_path: Path) -> Path:
    """The committed test-config metrics as the AMD Zen 3 machine wrote them."""
    repo = metrics_repo(
        tmp_path,
        {
            "dvc.yaml": "metrics:\n  - metrics/test/train.json\n  - metrics/test/eval.json\n",
            "metrics/test/train.json": json.dumps(
                {**GOOD_TRAIN, "train_perplexity": 632.8732, "valid_perplexity": 495.1169}
            ),
            "metrics/test/eval.json": json.dumps(
                {**GOOD_EVAL, "test_perplexity": 470.491, "valid_perplexity": 495.1842}
            ),
        },
    )
    run([sys.executable, "-m", "dvc", "init", "-q"], repo, env=tool_env())
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "dvc init")
    # What the Intel Xeon (AVX-512/AMX) writes for the same code.
    (repo / "metrics/test/train.json").write_text(
        json.dumps({**GOOD_TRAIN, "train_perplexity": 632.8733, "valid_perplexity": 495.1168})
    )
    return repo


def sections(out: str) -> tuple[list[str], list[str]]:
    """The metric rows of the report's changed table and of its rounding table."""
    changed, rounding, current = [], [], None
    for line in out.splitlines():
        if line.startswith("Changed metrics"):
            current = changed
        elif line.startswith("Within cross-CPU float rounding"):
            current = rounding
        elif line.startswith("<details>") or line.startswith("Changed params"):
            current = None
        elif current is not None and line.startswith("| metrics/"):
            current.append(line)
    return changed, rounding


def test_cross_cpu_rounding_is_not_a_change(tmp_path):
    repo = rounding_repo(tmp_path)
    eval_json = repo / "metrics/test/eval.json"
    eval_json.write_text(
        json.dumps({**GOOD_EVAL, "test_perplexity": 470.4909, "valid_perplexity": 495.1842})
    )
    out = report(repo)
    assert "**No metric changed** beyond cross-CPU float rounding" in out
    changed, rounding = sections(out)
    assert changed == []
    moved = {(row.split("|")[1].strip(), row.split("|")[2].strip()) for row in rounding}
    assert moved == {
        ("metrics/test/train.json", "train_perplexity"),
        ("metrics/test/train.json", "valid_perplexity"),
        ("metrics/test/eval.json", "test_perplexity"),
    }
    assert "632.8733" in out and "1e-06 relative" in out


def test_a_real_change_is_still_a_change_beside_rounding(tmp_path):
    repo = rounding_repo(tmp_path)
    (repo / "metrics/test/eval.json").write_text(
        json.dumps({**GOOD_EVAL, "test_perplexity": 470.0, "valid_perplexity": 495.1842})
    )
    out = report(repo)
    assert "No metric changed" not in out
    changed, rounding = sections(out)
    assert len(changed) == 1 and "test_perplexity" in changed[0] and "470.491" in changed[0]
    assert len(rounding) == 2 and all("metrics/test/train.json" in row for row in rounding)


# --- results that list themselves -----------------------------------------------------------


def test_a_new_results_folder_lists_itself(tmp_path):
    """The project's own dvc.yaml, no edit: a new config's files appear in `dvc metrics show`,
    `dvc metrics diff` and `dvc plots show`; its timings appear in none of them."""
    repo = make_project(tmp_path)
    for folder in ("metrics", "plots", "timings"):
        committed_tree(folder, repo)
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "committed results")

    def show() -> dict:
        shown = json.loads(dvc(repo, "metrics", "show", "--json", env=tool_env()).stdout)
        (workspace,) = shown.values()
        return workspace["data"]

    before = show()
    assert {"metrics/test/train.json", "metrics/test/eval.json"} <= set(before)
    assert all("error" not in result for result in before.values()), before

    variant = {**GOOD_TRAIN, "config": "variant"}

    def write(path: str, text: str) -> None:
        (repo / path).parent.mkdir(parents=True, exist_ok=True)
        (repo / path).write_text(text, encoding="utf-8")

    write("metrics/variant/train.json", json.dumps(variant))
    write("metrics/variant/eval.json", json.dumps({**GOOD_EVAL, "config": "variant"}))
    write("plots/variant/history.csv", "epoch,lr,train_perplexity,valid_perplexity\n1,1.0,9,8\n")
    write("timings/variant/speed.json", json.dumps({"words_per_sec": 1.0, "wall_time_s": 2.0}))

    after = show()
    assert set(after) - set(before) == {"metrics/variant/train.json", "metrics/variant/eval.json"}
    assert after["metrics/variant/train.json"]["data"]["train_perplexity"] == 635.7
    diff = json.loads(dvc(repo, "metrics", "diff", "HEAD", "--json", env=tool_env()).stdout)
    assert set(diff) == {"metrics/variant/train.json", "metrics/variant/eval.json"}
    plots = json.loads(dvc(repo, "plots", "show", "--json", env=tool_env()).stdout)["data"]
    assert "plots/variant/history.csv" in plots and "plots/test/history.csv" in plots
    assert not any("timings" in name for name in plots)
