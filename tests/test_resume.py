"""The resume matrix: a run killed with kill -9 between an epoch's checkpoint and its MLflow
metrics, then rerun the way a sweep reruns it, through the real `dvc`: plainly, queued
(`dvc queue start`, whose temp copies DVC deletes) and as 2 gloo ranks. Each mode reruns
with (a) nothing changed, (b) an operational key changed, (c) a comment added to a module
outside the training loop (tracking.py), each resuming where the kill left it; then (d) a
result key changed, which trains fresh in a new run beside the first checkpoint; then the
first settings again, which resume and finish the first run: one FINISHED MLflow run with
every epoch's metrics once. On a synthetic corpus and a tiny config (conftest)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml
from conftest import PROJECT_ROOT, copy_project, dvc, git, run, tiny_workdir, tool_env

from ptblm.commands.train import KILL_AFTER_CHECKPOINT_ENV

pytestmark = pytest.mark.e2e

EPOCHS = 5  # kill after 1, (a) 2, (b) 3, (c) 4; the first run then finishes epoch 5
Step = Callable[[Path, list[str], bool], None]


def checkpoints(repo: Path) -> dict[str, int]:
    """{checkpoint file: epochs it holds} under the project root."""
    return {
        path.name: torch.load(path, weights_only=True)["epoch"]
        for path in sorted((repo / "checkpoints").glob("tiny/*.pt"))
    }


def runs(repo: Path) -> list:
    from mlflow.tracking import MlflowClient

    store = MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlflow.db'}")
    experiment = store.get_experiment_by_name("ptb-lm")
    found = store.search_runs([experiment.experiment_id], order_by=["attributes.start_time"])
    return [(run, store.get_metric_history(run.info.run_id, "valid_perplexity")) for run in found]


def kill_env(repo: Path, kill: bool) -> dict[str, str]:
    return tool_env(repo, **({KILL_AFTER_CHECKPOINT_ENV: "1"} if kill else {}))


def exp_run(repo: Path, sets: list[str], kill: bool) -> None:
    """`dvc exp run -S ...` in the workspace; killed, it fails."""
    result = dvc(repo, "exp", "run", *_flags(sets), env=kill_env(repo, kill), check=False)
    assert (result.returncode != 0) == kill, result.stdout[-3000:] + result.stderr[-3000:]


def stage_run(repo: Path, sets: list[str], kill: bool) -> None:
    """The train stage's own command (here: launching 2 torchrun ranks), params set first."""
    params = yaml.safe_load((repo / "params.yaml").read_text())
    for assignment in sets:
        key, value = assignment.split("=")
        section, name = key.split(".")
        params[section][name] = yaml.safe_load(value)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    cmd = [sys.executable, "stages/train.py"]
    result = run(cmd, repo, env=kill_env(repo, kill), check=False)
    assert (result.returncode != 0) == kill, result.stdout[-3000:] + result.stderr[-3000:]


def queue_and_run(repo: Path, experiments: list[list[str]], kill: bool) -> None:
    """Queue `experiments` (each a list of -S values) and run them in order with one
    `dvc queue start` worker; killed, each fails."""
    env = kill_env(repo, kill)
    for sets in experiments:
        dvc(repo, "exp", "run", "--queue", *_flags(sets), env=env)
    # returns when the worker it spawns exits (our pipes stay open until then), ~10 s after
    # the queue empties: the next batch gets a worker of its own, with its own environment
    dvc(repo, "queue", "start", env=env)
    deadline = time.monotonic() + 300
    while any(word in (status := dvc(repo, "queue", "status", env=env).stdout)
              for word in ("Queued", "Running")):  # fmt: skip
        assert time.monotonic() < deadline, status
        time.sleep(1)
    outcome = "Failed" if kill else "Success"
    assert status.count(outcome) >= len(experiments), status


def _flags(sets: list[str]) -> list[str]:
    return [flag for value in sets for flag in ("-S", value)]


def add_a_comment_to_tracking(repo: Path) -> None:
    tracking_py = repo / "src" / "ptblm" / "tracking.py"
    tracking_py.write_text(tracking_py.read_text() + "# a fix far from training\n")
    git(repo, "commit", "-qam", "a comment in tracking.py")


OP_CHANGE = "train.gpu_wait_s=60"
RESULT_CHANGE = "train.seed=99"


def resume_matrix(repo: Path, step: Step) -> None:
    """One step at a time, checking the checkpoint and the MLflow run after each."""
    # killed after epoch 1's checkpoint, before epoch 1's metrics
    step(repo, [], True)
    ((first, _),) = runs(repo)
    assert list(checkpoints(repo).values()) == [1]
    (original,) = checkpoints(repo)

    # (a) nothing changed, (b) an operational key, (c) a module outside the training loop:
    # each resumes the same checkpoint file and logs into the same run
    step(repo, [], True)
    assert checkpoints(repo) == {original: 2}
    step(repo, [OP_CHANGE], True)
    assert checkpoints(repo) == {original: 3}
    add_a_comment_to_tracking(repo)
    step(repo, [OP_CHANGE], True)
    assert checkpoints(repo) == {original: 4}
    ((run_, _),) = runs(repo)
    assert run_.info.run_id == first.info.run_id
    assert run_.data.tags["resumed_with.train.gpu_wait_s"] == "60.0"
    assert run_.data.tags["train.gpu_wait_s"] == "86400.0"  # the first segment's

    # (d) a result key changed: a new run from epoch 1 with its own checkpoint; the first
    # checkpoint stays
    step(repo, [OP_CHANGE, RESULT_CHANGE], False)
    assert checkpoints(repo) == {original: 4}  # the seed-99 run finished and removed its own
    (_, _), (fresh, fresh_curve) = runs(repo)
    assert fresh.info.status == "FINISHED" and fresh.data.tags["resumed"] == "False"
    assert fresh.data.params["train.seed"] == "99"
    assert sorted(m.step for m in fresh_curve) == list(range(1, EPOCHS + 1))

    # the first settings again: the first run resumes after epoch 4 and finishes
    step(repo, [OP_CHANGE, "train.seed=1234"], False)
    assert checkpoints(repo) == {}
    assert_first_run_finished(repo, first.info.run_id)


def assert_first_run_finished(repo: Path, run_id: str) -> None:
    """Resumed after epoch 4 (so every rerun before resumed too), every epoch logged once."""
    (run_, curve), *_ = runs(repo)
    assert run_.info.run_id == run_id and run_.info.status == "FINISHED"
    assert run_.data.tags["resumed"] == "True" and run_.data.tags["resumed_from_epoch"] == "4"
    assert sorted(m.step for m in curve) == list(range(1, EPOCHS + 1))  # each epoch once
    assert "train.num_threads" not in run_.data.params  # operational: a tag
    assert run_.data.tags["train.num_threads"] == "1"


def test_a_killed_dvc_exp_run_resumes_through_every_rerun_a_sweep_makes(tiny_template, tmp_path):
    repo = copy_project(tiny_template, tmp_path)
    resume_matrix(repo, exp_run)
    trained = json.loads((repo / "metrics" / "tiny" / "train.json").read_text())
    assert trained["epochs"] == EPOCHS
    handed = json.loads((repo / "models" / "tiny" / "mlflow_run.json").read_text())
    assert handed["run_id"] == runs(repo)[0][0].info.run_id  # evaluate scored the first run

    # finished: operational keys retrain and re-evaluate nothing (train and evaluate do not
    # depend on them; check, which validates them, reruns in a second)
    ops = ["train.num_threads=2", "train.max_restarts=2", "train.cuda_graphs=false"]
    result = dvc(repo, "exp", "run", *_flags(ops), env=tool_env(repo))
    assert "Stage 'train' didn't change, skipping" in result.stdout
    assert "Stage 'evaluate' didn't change, skipping" in result.stdout
    assert "Stage 'adapt' didn't change, skipping" in result.stdout

    # train reruns and evaluate does not (killed in between): the old test perplexity is
    # never shown as the new model's
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["train"]["seed"] = 7
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run([sys.executable, "stages/train.py", "--no-tracking"], repo, env=tool_env(repo))
    check = run([sys.executable, str(PROJECT_ROOT / ".ci" / "check_metrics.py"), "--workspace",
                 "--root", str(repo)], repo, check=False)  # fmt: skip
    assert check.returncode == 1 and "metrics/tiny/eval.json" in check.stderr
    assert "rerun evaluate" in check.stderr
    assert "metrics/tiny/adapt.json" in check.stderr and "rerun adapt" in check.stderr
    shown = run([sys.executable, "-m", "ptblm", "compare", "--source", "metrics", "--format",
                 "csv"], repo, env=tool_env(repo)).stdout  # fmt: skip
    (row,) = [line for line in shown.splitlines() if line.startswith("metrics/tiny,")]
    assert "eval.json scored another model" in row and "rerun adapt" in row
    assert (
        str(json.loads((repo / "metrics/tiny/eval.json").read_text())["test_perplexity"]) not in row
    )


def test_a_killed_run_of_two_ranks_resumes_through_every_rerun(tiny_template, tmp_path):
    """The train stage's command with train.nproc_per_node 2: torchrun, 2 gloo ranks, rank 0
    killed; every rank resumes from rank 0's checkpoint."""
    repo = copy_project(tiny_template, tmp_path)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["train"]["nproc_per_node"] = 2
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git(repo, "commit", "-qam", "two ranks")
    resume_matrix(repo, stage_run)
    assert runs(repo)[0][0].data.params["train.nproc_per_node"] == "2"


def test_a_killed_queued_run_resumes_when_queued_again(tiny_template, tmp_path):
    """The same reruns, queued: DVC deletes each queued run's temp copy, the checkpoint lives
    at the project root. Five killed experiments in one worker, then one that finishes."""
    repo = copy_project(tiny_template, tmp_path)
    try:
        # killed after epoch 1, then (a) after 2, (b) after 3
        queue_and_run(repo, [[], [], [OP_CHANGE]], kill=True)
        add_a_comment_to_tracking(repo)
        queue_and_run(repo, [[OP_CHANGE], [OP_CHANGE, RESULT_CHANGE]], kill=True)  # (c), (d)
        ((first, _), (fresh, _)) = runs(repo)
        assert fresh.data.params["train.seed"] == "99" and fresh.info.run_id != first.info.run_id
        assert sorted(checkpoints(repo).values()) == [1, 4]  # (d)'s beside the first
        queue_and_run(repo, [[OP_CHANGE]], kill=False)
        # the queue's log of the finished run holds its epoch lines (flushed without a
        # terminal) and the stages after training
        status = dvc(repo, "queue", "status", env=tool_env(repo)).stdout
        name = [line.split()[1] for line in status.splitlines() if "Success" in line][-1]
        log = dvc(repo, "queue", "logs", name, env=tool_env(repo)).stdout
        assert f"epoch {EPOCHS:3d}" in log and "Running stage 'adapt'" in log, log[-3000:]
    finally:
        dvc(repo, "queue", "stop", "--kill", env=tool_env(repo), check=False)
    assert list(checkpoints(repo).values()) == [1]  # the first run's is gone, (d)'s stays
    assert_first_run_finished(repo, first.info.run_id)
    # queued runs execute in temp copies; $DVC_ROOT brings their runs, scores and artifacts
    # back to <root>/mlflow.db and <root>/mlruns, not into the deleted copies
    (done, _), *_ = runs(repo)
    assert "test_perplexity" in done.data.metrics
    assert done.info.artifact_uri.startswith((repo / "mlruns").as_uri())
    from mlflow.tracking import MlflowClient

    store = MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlflow.db'}")
    assert "learning_curve.png" in {a.path for a in store.list_artifacts(done.info.run_id)}

    # what is left, listed; once the training code changes it can never resume: stale
    checkpoints_command = [sys.executable, "-m", "ptblm", "checkpoints"]
    (left,) = checkpoints(repo)
    listed = run(checkpoints_command, repo, env=tool_env(repo)).stdout
    assert f"checkpoints/tiny/{left}  tiny  epoch 1/{EPOCHS}  seed 99" in listed
    assert "resumable" in listed and "stale" not in listed
    model_py = repo / "src" / "ptblm" / "model.py"
    model_py.write_text(model_py.read_text() + "# a change to the model\n")
    cleaned = run([*checkpoints_command, "--remove-stale"], repo, env=tool_env(repo)).stdout
    assert "stale: other training code  (removed)" in cleaned
    assert checkpoints(repo) == {}


def interrupt_after_an_epoch(root: Path, sig: signal.Signals) -> tuple[int, str]:
    """`ptblm train` with stdout a pipe, as under nohup or in a CI log: read while it runs
    until an epoch's line comes (so it must be flushed, not held until the end), then `sig`.
    Returns that epoch and what it wrote on stderr."""
    stderr = root / f"stderr-{sig.name}.txt"
    env = tool_env()
    env.pop("PYTHONUNBUFFERED", None)  # as on a user's machine: stdout to a pipe is buffered
    with (
        stderr.open("w") as err,
        subprocess.Popen(
            [sys.executable, "-m", "ptblm", "train"],
            cwd=root,
            env=env,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        ) as proc,
    ):
        for line in proc.stdout:
            if line.startswith("epoch "):
                break
        assert proc.poll() is None, f"no epoch line before the end; stdout ended at {line!r}"
        proc.send_signal(sig)
        rest = proc.stdout.read()
        assert proc.wait(timeout=120) == 128 + sig, rest
    held = f"epoch lines written before {sig.name} came out after it: held in a buffer"
    assert "epoch" not in rest, held
    return int(line.split()[1]), stderr.read_text()


def test_an_interrupted_run_is_killed_in_mlflow_says_how_to_go_on_and_resumes(tmp_path):
    """SIGTERM (kill, a queue stopped) or SIGINT (Ctrl-C): the MLflow run ends KILLED, not
    RUNNING forever; stderr says how to resume and how to get back the committed results
    DVC deleted before the stage ran; a rerun resumes, reopens the run and finishes it."""
    epochs = 12
    root = tiny_workdir(tmp_path, epochs)
    first, second = signal.SIGTERM, signal.SIGINT
    done, stderr = interrupt_after_an_epoch(root, first)
    assert done >= 1
    assert f"ptblm train: interrupted by {first.name}" in stderr
    assert "git checkout metrics plots timings" in stderr and "dvc checkout" in stderr
    assert "Traceback" not in stderr
    ((killed, _),) = runs(root)
    assert killed.info.status == "KILLED"

    done, stderr = interrupt_after_an_epoch(root, second)  # resumed, then the other signal
    assert f"interrupted by {second.name}" in stderr
    ((again, _),) = runs(root)
    assert again.info.run_id == killed.info.run_id and again.info.status == "KILLED"

    finished = run([sys.executable, "-m", "ptblm", "train"], root, env=tool_env())
    assert f"resuming tiny after epoch {done} from" in finished.stdout
    ((last, curve),) = runs(root)
    assert last.info.run_id == killed.info.run_id and last.info.status == "FINISHED"
    assert last.data.tags["resumed_from_epoch"] == str(done)
    assert sorted(m.step for m in curve) == list(range(1, epochs + 1))  # each epoch once
