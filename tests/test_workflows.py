"""The GitHub Actions workflow, checked offline: it parses, and its jobs do what the README says.

GitHub cannot be reached from here, so these tests read .github/workflows/ci.yml with pyyaml
(which parses the key `on` as True) and check the triggers, the job graph and the steps.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW_DIR = ROOT / ".github" / "workflows"
CI = WORKFLOW_DIR / "ci.yml"


@pytest.fixture(scope="module")
def workflow() -> dict:
    return yaml.safe_load(CI.read_text(encoding="utf-8"))


def jobs(workflow: dict) -> dict:
    return workflow["jobs"]


def needs(job: dict) -> list[str]:
    value = job.get("needs", [])
    return [value] if isinstance(value, str) else list(value)


def script(job: dict) -> str:
    """Every `run:` of a job, joined."""
    return "\n".join(step.get("run", "") for step in job["steps"])


def uses(job: dict) -> list[str]:
    return [step["uses"] for step in job["steps"] if "uses" in step]


def step_using(job: dict, action: str) -> dict:
    found = [s for s in job["steps"] if s.get("uses", "").startswith(action + "@")]
    assert found, f"no step uses {action}"
    return found[0]


def test_every_workflow_file_parses():
    files = sorted(WORKFLOW_DIR.glob("*.y*ml"))
    assert CI in files
    for path in files:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        assert isinstance(data, dict), path
        assert True in data or "on" in data, f"{path.name}: no triggers"
        assert data.get("jobs"), f"{path.name}: no jobs"


def test_triggers(workflow):
    on = workflow[True]  # YAML 1.1: the bare key `on` is the boolean True
    assert {"push", "pull_request", "workflow_dispatch"} <= set(on)
    model = on["workflow_dispatch"]["inputs"]["model"]
    assert model["type"] == "choice"
    assert set(model["options"]) == {"small", "medium", "large", "test"}
    assert model["default"] in model["options"]
    precision = on["workflow_dispatch"]["inputs"]["precision"]
    assert set(precision["options"]) == {"fp32", "tf32", "bf16"}
    assert precision["default"] == "tf32"


def test_job_graph_is_acyclic_and_closed(workflow):
    all_jobs = jobs(workflow)
    for name, job in all_jobs.items():
        for dep in needs(job):
            assert dep in all_jobs, f"{name} needs unknown job {dep}"
    # Topological order exists (no cycles).
    done: set[str] = set()
    pending = dict(all_jobs)
    while pending:
        ready = [n for n, j in pending.items() if set(needs(j)) <= done]
        assert ready, f"cycle among jobs {sorted(pending)}"
        for n in ready:
            done.add(n)
            del pending[n]


def test_order_lint_then_tests_then_pipeline(workflow):
    j = jobs(workflow)
    assert needs(j["test"]) == ["lint"]
    assert needs(j["pipeline"]) == ["test"]
    assert "lint" in needs(j["gpu-experiment"])
    for name in ("test", "pipeline"):
        assert j[name]["if"] == "github.event_name != 'workflow_dispatch'"
        assert j[name]["runs-on"] == "ubuntu-latest"
    assert j["gpu-experiment"]["if"] == "github.event_name == 'workflow_dispatch'"


def test_every_job_checks_out_and_has_a_timeout(workflow):
    for name, job in jobs(workflow).items():
        assert uses(job)[0].startswith("actions/checkout@"), name
        assert isinstance(job.get("timeout-minutes"), int), name
        for action in uses(job):
            assert "@" in action, f"{name}: {action} is not pinned to a version"


def test_lint_and_test_steps(workflow):
    j = jobs(workflow)
    assert "ruff check" in script(j["lint"])
    test = script(j["test"])
    assert "ruff check" in test
    assert ".ci/check_metrics.py" in test
    assert any(line.strip() == "pytest" for line in test.splitlines())


def test_cpu_jobs_install_cpu_torch_first(
    workflow,
):
    j = jobs(workflow)
    assert workflow["env"]["TORCH_VERSION"] == "2.13.0"
    for name in ("test", "pipeline"):
        text = script(j[name])
        cpu = text.index(
            'pip install "torch==${TORCH_VERSION}" --index-url https://download.pytorch.org/whl/cpu'
        )
        assert cpu < text.index("pip install -e '.[dev]'"), name


def test_archive_is_cached_and_used(workflow):
    j = jobs(workflow)
    for name in ("test", "pipeline"):
        cache = step_using(j[name], "actions/cache")
        assert cache["with"]["path"] == "${{ env.PTB_ARCHIVE }}"
        assert "PTB_MD5" in cache["with"]["key"]
        download = next(s for s in j[name]["steps"] if "curl" in s.get("run", ""))
        assert download["if"] == f"steps.{cache['id']}.outputs.cache-hit != 'true'"
        assert "md5sum -c" in download["run"]
    test_step = next(s for s in j["test"]["steps"] if s.get("run") == "pytest")
    assert test_step["env"]["PTBLM_TEST_ARCHIVE"] == "${{ env.PTB_ARCHIVE }}"
    run_step = next(s for s in j["pipeline"]["steps"] if "dvc exp run" in s.get("run", ""))
    assert run_step["env"]["PTBLM_DATA_SOURCE"] == "${{ env.PTB_ARCHIVE }}"


def test_pipeline_runs_test_config_and_reports_the_diff(workflow):
    job = jobs(workflow)["pipeline"]
    text = script(job)
    assert "dvc exp run -S model=test" in text
    assert step_using(job, "actions/checkout")["with"]["fetch-depth"] == 0
    report = next(s for s in job["steps"] if ".ci/report.py" in s.get("run", ""))
    assert "origin/{0}" in report["env"]["BASE"] and "github.base_ref" in report["env"]["BASE"]
    assert "GITHUB_STEP_SUMMARY" in text
    comment = next(s for s in job["steps"] if "gh pr comment" in s.get("run", ""))
    assert comment["env"]["GH_TOKEN"] == "${{ secrets.GITHUB_TOKEN }}"
    assert "github.event_name == 'pull_request'" in comment["if"]
    assert job["permissions"]["pull-requests"] == "write"


def test_report_script_runs_metrics_and_plots_diff():
    text = (ROOT / ".ci" / "report.py").read_text(encoding="utf-8")
    assert '"metrics", "diff", args.base, "--md"' in text
    assert '"plots", "diff", args.base, "-o"' in text


@pytest.mark.parametrize("name", ["pipeline", "gpu-experiment"])
def test_artifacts_hold_plots_and_metrics(workflow, name):
    upload = step_using(jobs(workflow)[name], "actions/upload-artifact")
    assert upload["if"] == "always()"
    paths = upload["with"]["path"].split()
    assert ".ci/out/" in paths and "metrics/" in paths
    assert upload["with"]["include-hidden-files"] is True


def test_gpu_job_runs_the_chosen_config_on_a_self_hosted_runner(workflow):
    job = jobs(workflow)["gpu-experiment"]
    assert "self-hosted" in job["runs-on"] and "gpu" in job["runs-on"]
    assert job["env"]["MODEL"] == "${{ inputs.model }}"
    assert job["env"]["PRECISION"] == "${{ inputs.precision }}"
    text = script(job)
    assert 'dvc exp run -S "model=${MODEL}"' in text
    assert '-S "train.precision=${PRECISION}"' in text
    assert "torch.cuda.is_available()" in text
    assert "index-url" not in text  # the default PyPI wheel is the CUDA one
    assert ".ci/report.py" in text and "GITHUB_STEP_SUMMARY" in text
    comment = next(s for s in job["steps"] if "gh api" in s.get("run", ""))
    assert comment["env"]["GH_TOKEN"] == "${{ secrets.GITHUB_TOKEN }}"
    # Inputs reach shell scripts through env, never spliced into the script text.
    assert "${{ inputs." not in text


@pytest.mark.skipif(shutil.which("actionlint") is None, reason="actionlint not installed")
def test_actionlint():
    result = subprocess.run(
        ["actionlint", "-shellcheck=", str(CI)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
