"""MLflow tracking against real stores: SQLite in a temp project, a real `mlflow server`,
queued DVC experiments, and two processes writing one store at once."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import committed_params_file, copy_project, dvc, git, run, tool_env

from ptblm.config import TrackingParams
from ptblm.tracking import (
    EPOCH_METRICS,
    EVAL_METRICS,
    TRAIN_SUMMARY,
    UI_VIEW_TAG,
    NullTracker,
    TrackingError,
    open_tracker,
)

SENTENCE = "the company said it expects to report a loss"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def select_test_model(repo: Path) -> None:
    params = repo / "params.yaml"
    params.write_text(params.read_text().replace("model: small", "model: test", 1))
    run(["git", "commit", "-qam", "select the test config"], repo)


def client(uri: str):
    import mlflow

    return mlflow.MlflowClient(uri)


def runs_of(uri: str) -> list:
    store = client(uri)
    experiment = store.get_experiment_by_name("ptb-lm")
    assert experiment is not None, f"no ptb-lm experiment in {uri}"
    return store.search_runs([experiment.experiment_id])


# --- without a store -----------------------------------------------------------------------


def test_no_tracking_never_imports_mlflow(tmp_path: Path) -> None:
    """`train --no-tracking` runs up to training without mlflow in sys.modules."""
    code = textwrap.dedent(
        """
        import sys
        import ptblm.checkpoint, ptblm.data
        from ptblm import cli
        from ptblm.errors import PtblmError

        def stop(*args, **kwargs):
            raise PtblmError(f"mlflow imported: {'mlflow' in sys.modules}")

        ptblm.data.load_corpus = lambda path: None
        ptblm.checkpoint.run_identity = stop  # what training does first
        cli.main(["train", "--no-tracking", "--model", "test", "--params", sys.argv[1]])
        """
    )
    params = committed_params_file(tmp_path / "committed")
    result = subprocess.run(
        [sys.executable, "-c", code, str(params)],
        cwd=tmp_path,
        env=tool_env(),
        capture_output=True,
        text=True,
    )
    assert "mlflow imported: False" in result.stderr, result.stderr
    assert not (tmp_path / "mlflow.db").exists()


def test_unreachable_server_fails_fast_or_continues_when_asked() -> None:
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    start = time.monotonic()
    with pytest.raises(TrackingError, match="unreachable.*on_unreachable: continue"):
        open_tracker(TrackingParams(uri=uri), "run")
    assert time.monotonic() - start < 10
    tracker = open_tracker(TrackingParams(uri=uri, on_unreachable="continue"), "run")
    assert type(tracker) is NullTracker


# --- the default SQLite store ----------------------------------------------------------------


@pytest.mark.e2e
def test_pipeline_run_lands_in_root_sqlite_store(project: Path, shared_archive: Path) -> None:
    """One `dvc repro` of the test config: one run with everything the UI compares."""
    params = project / "params.yaml"  # one thread, which the device tag must name; windows
    text = params.read_text().replace("num_threads: 0 ", "num_threads: 1 ", 1)  # of 35 steps
    params.write_text(re.sub(r"(?m)^(    num_steps:) 2$", r"\1 35", text, count=1))
    select_test_model(project)
    dvc(project, "repro", env=tool_env(project, PTBLM_DATA_SOURCE=str(shared_archive)))
    uri = f"sqlite:///{project / 'mlflow.db'}"
    (found,) = runs_of(uri)
    run_id = found.info.run_id
    assert json.loads((project / "models/test/mlflow_run.json").read_text())["run_id"] == run_id
    assert found.info.status == "FINISHED"
    assert found.info.run_name.startswith("test-")

    params = found.data.params
    for key in ("init_scale", "num_steps", "hidden_size", "keep_prob", "lr_decay", "max_epoch"):
        assert key in params
    assert params["config"] == "test" and params["num_steps"] == "35"
    variant = (params["cell"], params["tie_weights"], params["dropout"], params["lr_schedule"])
    assert variant == ("lstm", "False", "standard", "epoch")  # the variant keys' defaults
    assert {"train.seed", "train.precision", "train.nproc_per_node", "evaluate.batch_size"} <= set(
        params
    )
    assert "train.device" not in params and found.data.tags["train.device"] == "auto"  # a tag

    tags = found.data.tags
    assert tags["config"] == "test" and tags["device"] == "cpu" and tags["resumed"] == "False"
    assert tags["git_commit"] == run(["git", "rev-parse", "HEAD"], project).stdout.strip()
    assert tags["torch_version"] and tags["device_name"] == "cpu (1 thread)"

    store = client(uri)
    for key in EPOCH_METRICS.values():
        assert [m.step for m in store.get_metric_history(run_id, key)] == [1], key
    eval_json = json.loads((project / "metrics/test/eval.json").read_text())
    metrics = found.data.metrics
    assert metrics["test_perplexity"] == pytest.approx(eval_json["test_perplexity"], abs=1e-3)
    total, trained = EVAL_METRICS["total_wall_time_s"], TRAIN_SUMMARY["wall_time_s"]
    assert metrics[total] > metrics[trained] > 0
    assert not any(k.startswith("system/") for k in metrics)  # tracking.system_metrics: false

    artifacts = {a.path for a in store.list_artifacts(run_id)}
    names = ("vocab.txt", "train.json", "speed.json", "history.csv", "learning_curve.png")
    assert {*names, "eval.json"} <= artifacts

    import mlflow

    import ptblm
    from ptblm.score import parse, score

    mlflow.set_tracking_uri(uri)
    (logged,) = mlflow.pyfunc.load_model(f"runs:/{run_id}/model").predict([SENTENCE])
    lm = ptblm.load_model(project / "models/test/model.pt")
    (row,), _, _ = score(lm, parse([SENTENCE], lm.vocab))
    assert logged == pytest.approx(row.perplexity, rel=1e-6)

    # evaluate on its own (only its params changed): its own run, nested under the training
    # run, which keeps its one test score and its wall time
    env = tool_env(project, PTBLM_DATA_SOURCE=str(shared_archive))
    result = dvc(project, "exp", "run", "-S", "evaluate.batch_size=5", env=env)
    assert "Running stage 'train'" not in result.stdout
    assert "Running stage 'evaluate'" in result.stdout
    by_id = {r.info.run_id: r for r in runs_of(uri)}
    training = by_id.pop(run_id)
    (evaluation,) = by_id.values()
    assert len(store.get_metric_history(run_id, "test_perplexity")) == 1
    assert training.data.metrics[total] == metrics[total]
    assert evaluation.data.tags["ptblm.training_run_id"] == run_id
    assert evaluation.data.tags["mlflow.parentRunId"] == run_id
    assert evaluation.data.params["evaluate.batch_size"] == "5"
    assert evaluation.info.status == "FINISHED"
    assert evaluation.data.metrics["test_perplexity"] == pytest.approx(
        json.loads((project / "metrics/test/eval.json").read_text())["test_perplexity"], abs=1e-3
    )

    # evaluate honours tracking.enabled: false, and a run file from another machine's store
    # gives a warning and an untracked evaluation
    evaluate = [sys.executable, "stages/evaluate.py"]
    run([*evaluate, "--no-tracking"], project, env=env)
    run_file = project / "models/test/mlflow_run.json"
    moved = json.loads(run_file.read_text())
    moved["tracking_uri"] = "sqlite:////elsewhere/on/another/machine/mlflow.db"
    run_file.write_text(json.dumps(moved))
    result = run(evaluate, project, env=env)
    assert "warning: the training run in models/test/mlflow_run.json cannot be reached" in (
        result.stderr
    )
    assert len(runs_of(uri)) == 2  # neither evaluation opened a run


# --- a real tracking server ------------------------------------------------------------------


@pytest.fixture
def mlflow_server(tmp_path: Path):
    """`mlflow server` on a free loopback port with its own SQLite store and artifact dir."""
    port = free_port()
    log = (tmp_path / "server.log").open("w")
    server = subprocess.Popen(
        [
            sys.executable, "-m", "mlflow", "server",
            "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
            "--artifacts-destination", str(tmp_path / "server-artifacts"),
            "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        ],
        env=tool_env(),
        stdout=log,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError((tmp_path / "server.log").read_text()) from None
                time.sleep(1)
        yield uri
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


def clone(origin: Path, dest: Path) -> Path:
    """A fresh clone of `origin`, as another machine would make it, with a test identity."""
    run(["git", "clone", "-q", str(origin), str(dest)], origin.parent)
    git(dest, "config", "user.email", "tests@ptb-lm.invalid")
    git(dest, "config", "user.name", "ptb-lm tests")
    return dest


def wait_for_queue(repo: Path, env: dict[str, str], *names: str) -> None:
    """Wait until `dvc queue start`'s worker has run the queued experiments `names`; fail with
    their logs unless every one succeeded."""
    deadline = time.monotonic() + 600
    while True:
        status = dvc(repo, "queue", "status", env=env).stdout
        if not any(word in status for word in ("Queued", "Running")):
            break
        assert time.monotonic() < deadline, status
        time.sleep(2)
    if status.count("Success") != len(names):
        logs = [dvc(repo, "queue", "logs", name, env=env, check=False) for name in names]
        raise AssertionError("\n".join([status, *(log.stdout + log.stderr for log in logs)]))


def exp_show_perplexities(repo: Path) -> dict[str, float]:
    """{experiment name: test perplexity} of the experiments `dvc exp show --json` lists."""
    shown = json.loads(dvc(repo, "exp", "show", "--json").stdout)
    found = {}
    for baseline in shown:
        for exp in baseline.get("experiments") or []:
            for rev in exp["revs"]:
                metrics = rev["data"]["metrics"]["metrics/tiny/eval.json"]["data"]
                found[rev["name"]] = metrics["test_perplexity"]
    return found


@pytest.mark.e2e
def test_two_machines_share_one_server_and_exchange_experiments_through_git(
    tiny_template: Path, mlflow_server: str, tmp_path: Path
) -> None:
    """docs/scale-out.md, "Several machines": two clones of one git remote ("machines" A and
    B) each run an experiment, A through its queue, against one `mlflow server`; both runs
    land in one MLflow experiment, and `dvc exp push` / `dvc exp pull` through a bare git
    repo and a DVC remote on disk bring both results, metrics and model, to a third clone."""
    project = copy_project(tiny_template, tmp_path)
    storage, origin = tmp_path / "dvc-storage", tmp_path / "origin.git"
    dvc(project, "remote", "add", "-d", "storage", str(storage))
    git(project, "commit", "-qam", "a DVC remote every clone shares")
    dvc(project, "push", "-q")  # the prepared data, which the other machines pull
    run(["git", "init", "-q", "--bare", "-b", "main", str(origin)], tmp_path)
    git(project, "push", "-q", str(origin), "main")
    machine_a, machine_b = clone(origin, tmp_path / "a"), clone(origin, tmp_path / "b")

    def env(repo: Path) -> dict[str, str]:
        return tool_env(repo, MLFLOW_TRACKING_URI=mlflow_server)

    for repo in (machine_a, machine_b):
        dvc(repo, "pull", "fetch", "extract", "prepare", env=env(repo))

    # one after the other (2 cores); seeds differ, so each machine's perplexity is its own
    dvc(machine_a, "exp", "run", "--queue", "-n", "machine-a", "-S", "train.seed=1",
        env=env(machine_a))  # fmt: skip
    # returns only when the worker it spawns exits, its output pipes closed, ~10 s after the
    # queue empties; wait_for_queue then reads the outcome
    dvc(machine_a, "queue", "start", env=env(machine_a))
    wait_for_queue(machine_a, env(machine_a), "machine-a")
    dvc(machine_b, "exp", "run", "-n", "machine-b", "-S", "train.seed=2",
        env=env(machine_b))  # fmt: skip

    found = {r.info.run_name: r for r in runs_of(mlflow_server)}
    assert sorted(found) == ["machine-a", "machine-b"]  # one experiment: ptb-lm, both runs
    assert len({r.info.experiment_id for r in found.values()}) == 1
    for name, r in found.items():
        assert r.data.tags["dvc_exp_name"] == name
        assert r.data.params["train.seed"] == {"machine-a": "1", "machine-b": "2"}[name]
        assert r.data.metrics["test_perplexity"] > 1
        assert "learning_curve.png" in {
            a.path for a in client(mlflow_server).list_artifacts(r.info.run_id)
        }
    baseline = git(project, "rev-parse", "HEAD").strip()
    assert {r.data.tags["dvc_baseline_rev"] for r in found.values()} == {baseline}
    for repo in (machine_a, machine_b):
        assert not (repo / "mlflow.db").exists()  # the server's, not a store of its own

    # results come back through git (metrics) and the DVC remote (models)
    dvc(machine_a, "exp", "push", "origin", "machine-a", env=env(machine_a))
    dvc(machine_b, "exp", "push", "origin", "machine-b", env=env(machine_b))
    elsewhere = clone(origin, tmp_path / "c")
    listed = dvc(elsewhere, "exp", "list", "origin", "--name-only", env=env(elsewhere)).stdout
    assert sorted(listed.split()) == ["machine-a", "machine-b"]
    assert exp_show_perplexities(elsewhere) == {}
    dvc(elsewhere, "exp", "pull", "origin", "machine-a", "machine-b", env=env(elsewhere))
    shown = exp_show_perplexities(elsewhere)
    assert sorted(shown) == ["machine-a", "machine-b"]
    assert shown["machine-a"] != pytest.approx(shown["machine-b"], abs=1e-3)
    for name, perplexity in shown.items():
        assert perplexity == pytest.approx(found[name].data.metrics["test_perplexity"], abs=1e-3)
    dvc(elsewhere, "exp", "apply", "machine-b", env=env(elsewhere))
    run_file = json.loads((elsewhere / "models/tiny/mlflow_run.json").read_text())
    assert run_file["run_id"] == found["machine-b"].info.run_id
    assert (elsewhere / "models/tiny/model.pt").stat().st_size > 0


# --- queued experiments and concurrent writers -----------------------------------------------


WRITER = textwrap.dedent(
    """
    import sys
    from ptblm.config import TrackingParams
    from ptblm.tracking import open_tracker

    uri, name, epochs = sys.argv[1], sys.argv[2], int(sys.argv[3])
    tracker = open_tracker(TrackingParams(uri=uri), name)
    tracker.log_params({"writer": name})
    for epoch in range(1, epochs + 1):
        tracker.log_epoch({"epoch": epoch, "lr": 1.0, "train_perplexity": epoch,
                           "valid_perplexity": epoch, "words_per_sec": 1.0, "epoch_time_s": 1.0})
    tracker.log_metrics({"test_perplexity": 1.0})
    tracker.end()
    """
)


@pytest.mark.e2e
def test_two_processes_logging_to_one_store_lose_nothing(tmp_path: Path) -> None:
    """Both start on a store that does not exist yet (schema creation races too)."""
    uri, epochs = f"sqlite:///{tmp_path / 'mlflow.db'}", 100
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, uri, name, str(epochs)],
            env=tool_env(),
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in ("a", "b")
    ]
    for writer in writers:
        _, err = writer.communicate(timeout=300)
        assert writer.returncode == 0, err
    found = runs_of(uri)
    assert sorted(r.info.run_name for r in found) == ["a", "b"]
    store = client(uri)
    for r in found:
        for key in EPOCH_METRICS.values():
            steps = [m.step for m in store.get_metric_history(r.info.run_id, key)]
            assert sorted(steps) == list(range(1, epochs + 1)), (r.info.run_name, key)
        assert r.info.status == "FINISHED"


def test_choosing_a_store_leaves_the_users_tracking_uri_alone(tmp_path: Path, monkeypatch) -> None:
    import mlflow

    from ptblm.tracking import use_store

    use_store(f"sqlite:///{tmp_path / 'a.db'}")
    assert "MLFLOW_TRACKING_URI" not in os.environ  # tracking.uri keeps working afterwards
    assert mlflow.get_tracking_uri().endswith("a.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:1")
    use_store(f"sqlite:///{tmp_path / 'b.db'}")
    assert os.environ["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:1"


def test_reopened_run_gets_the_epochs_a_kill_left_unlogged(tmp_path: Path) -> None:
    """A kill between an epoch's checkpoint and its metrics: the rerun logs that epoch once."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    settings = TrackingParams(uri=uri)
    history = [
        {
            "epoch": e,
            "lr": 1.0,
            "train_perplexity": 9.0 - e,
            "valid_perplexity": 10.0 - e,
            "words_per_sec": 1.0,
            "epoch_time_s": 1.0,
        }
        for e in (1, 2, 3)
    ]
    first = open_tracker(settings, "killed")
    first.log_epoch(history[0])  # killed after epoch 2's checkpoint, before its metrics
    first.end(failed=True)  # the process died (in-process, its run must be closed)
    rerun = open_tracker(settings, "killed", previous_run_id=first.run_id)
    assert rerun.reopened and rerun.run_id == first.run_id
    rerun.log_missing_epochs(history)
    rerun.end()
    for key in EPOCH_METRICS.values():
        steps = [m.step for m in client(uri).get_metric_history(first.run_id, key)]
        assert sorted(steps) == [1, 2, 3], key


def test_a_reopened_run_with_other_params_is_a_one_line_error(tmp_path: Path) -> None:
    """MLflow refuses to change a logged param; the store's refusal names the run and the fix
    instead of a traceback."""
    settings = TrackingParams(uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    first = open_tracker(settings, "first")
    first.log_params({"train.seed": 1})
    first.end(failed=True)
    rerun = open_tracker(settings, "first", previous_run_id=first.run_id)
    rerun.log_params({"train.seed": 1})  # the same values: fine
    with pytest.raises(TrackingError, match=rf"MLflow run {first.run_id} .*cannot take these"):
        rerun.log_params({"train.seed": 2})
    rerun.end()


# --- the MLflow UI -----------------------------------------------------------------------------


def test_the_experiment_carries_the_ui_view_and_system_metrics_are_opt_in(
    tmp_path: Path, monkeypatch
) -> None:
    """MLflow 3.17's UI opens the runs table with the perplexity columns from the URL that
    `ui_url` gives (checked in Chromium below): `workflowType` and a view stored in an
    experiment tag. An experiment made before the tag gets it. System metrics only when
    tracking.system_metrics asks for them."""
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    asked = []
    start_run = mlflow.start_run
    monkeypatch.setattr(
        mlflow, "start_run", lambda **kw: asked.append(kw["log_system_metrics"]) or start_run(**kw)
    )
    tracker = open_tracker(TrackingParams(uri=uri), "first")
    tracker.end()
    experiment = client(uri).get_experiment_by_name("ptb-lm")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    view = json.loads(experiment.tags[UI_VIEW_TAG[0]])
    assert view["selectedColumns"][1:] == [
        "metrics.`test_perplexity`",
        "metrics.`test_perplexity_cache`",
        "metrics.`test_perplexity_dynamic`",
        "metrics.`valid_perplexity`",
        "metrics.`train_perplexity`",
    ]
    assert tracker.ui_url() == (
        f"http://127.0.0.1:5000/#/experiments/{experiment.experiment_id}/runs"
        "?workflowType=machine_learning&viewStateShareKey=perplexities"
    )
    client(uri).delete_experiment_tag(experiment.experiment_id, UI_VIEW_TAG[0])  # an older one
    open_tracker(TrackingParams(uri=uri, system_metrics=True), "second").end()
    assert client(uri).get_experiment(experiment.experiment_id).tags[UI_VIEW_TAG[0]]
    assert asked == [False, True]


@pytest.mark.e2e
@pytest.mark.skipif(shutil.which("chromium") is None, reason="no chromium (apt install chromium)")
def test_the_ui_url_opens_the_runs_table_with_perplexities_in_chromium(mlflow_server: str) -> None:
    """The URL train prints and the README names, in headless Chromium against a real
    `mlflow server`: the runs table (not MLflow 3.17's GenAI overview, which its plain URL
    opens on), with test, valid and train perplexity as columns."""
    tracker = open_tracker(TrackingParams(uri=mlflow_server), "tiny-run")
    tracker.log_epoch({"epoch": 1, "lr": 1.0, "train_perplexity": 41.5, "valid_perplexity": 52.5,
                       "words_per_sec": 1.0, "epoch_time_s": 1.0})  # fmt: skip
    tracker.log_metrics({"test_perplexity": 50.25})
    tracker.end()

    def rendered(url: str) -> str:
        return subprocess.run(
            ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom",
             "--window-size=1800,900", "--virtual-time-budget=20000", url],
            capture_output=True, text=True, timeout=180,
        ).stdout  # fmt: skip

    page = rendered(tracker.ui_url())
    assert "tiny-run" in page and "Detect Issues" not in page
    for column, value in [("test", "50.25"), ("valid", "52.5"), ("train", "41.5")]:
        assert f"{column}_perplexity" in page and value in page, column
    plain = rendered(tracker.ui_url().split("?")[0])  # MLflow's default: the GenAI overview
    assert "test_perplexity" not in plain
