"""The logged MLflow model, from one tracked tiny `train` + `evaluate` in a real SQLite store:
quiet output, logged as code with no pickle, loaded in a fresh process, served over HTTP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from conftest import PROJECT_ROOT, committed_params, run, tool_env
from test_score_generate import write_text_corpus
from test_tracking import free_port

import ptblm
from ptblm.score import parse, score

pytestmark = pytest.mark.e2e  # real training processes

SENTENCES = ["the company said it expects a loss", "The shares rose 5% to $12 million."]
NOISE = ("UserWarning", "FutureWarning", "Downloading artifacts", " INFO ", "system metrics")


@pytest.fixture(scope="module")
def tracked(tmp_path_factory) -> dict:
    """`ptblm train` then `ptblm evaluate` of the `test` config on a small corpus, tracked."""
    root = tmp_path_factory.mktemp("tracked")
    write_text_corpus(root)
    params = committed_params()
    params["model"] = "test"
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    uri = f"sqlite:///{root / 'mlflow.db'}"
    env = tool_env(PROJECT_ROOT, MLFLOW_TRACKING_URI=uri)
    env.pop("PTBLM_VERBOSE", None)
    stderr = ""
    for stage in ("train", "evaluate"):
        done = run([sys.executable, "-m", "ptblm.cli", stage], root, env=env)
        stderr += done.stderr
    run_id = json.loads((root / "models/test/mlflow_run.json").read_text())["run_id"]
    return {"root": root, "uri": uri, "run_id": run_id, "stderr": stderr, "env": env}


def expected(root: Path, sentences: list[str]) -> list[float]:
    lm = ptblm.load_model(root / "models/test/model.pt")
    rows, _, _ = score(lm, parse(sentences, lm.vocab))
    return [r.perplexity for r in rows]


def test_a_tracked_run_prints_no_mlflow_noise(tracked: dict) -> None:
    noisy = [line for line in tracked["stderr"].splitlines() if any(n in line for n in NOISE)]
    assert noisy == [], "\n".join(noisy)


def test_verbose_brings_mlflow_output_back(tracked: dict) -> None:
    args = [sys.executable, "-m", "ptblm.cli", "generate", "--words", "2"]
    uri_args = ["--model-uri", f"runs:/{tracked['run_id']}/model"]
    quiet = run([*args, *uri_args], tracked["root"], env=tracked["env"])
    assert not any(n in quiet.stderr for n in NOISE), quiet.stderr
    loud = run([*args, *uri_args], tracked["root"], env={**tracked["env"], "PTBLM_VERBOSE": "1"})
    assert "Downloading artifacts" in loud.stderr
    assert quiet.stdout == loud.stdout  # the same model, the same default seed


def test_experiment_opens_on_runs_and_perplexities_sort_first(tracked: dict) -> None:
    import mlflow

    store = mlflow.MlflowClient(tracked["uri"])
    experiment = store.get_experiment_by_name("ptb-lm")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    metrics = store.get_run(tracked["run_id"]).data.metrics
    model_metrics = sorted(k for k in metrics if not k.startswith("system/"))  # the UI's order
    assert model_metrics[:3] == ["test_perplexity", "train_perplexity", "valid_perplexity"]
    assert len(model_metrics) > 3


def test_logged_model_is_code_and_plain_files(tracked: dict) -> None:
    import mlflow

    mlflow.set_tracking_uri(tracked["uri"])
    folder = Path(mlflow.artifacts.download_artifacts(f"runs:/{tracked['run_id']}/model"))
    files = [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()]
    assert not [f for f in files if f.endswith((".pkl", ".pickle", ".pyc", ".cloudpickle"))]
    assert "mlflow_model.py" in files  # the models-from-code file
    assert {"artifacts/model.pt", "artifacts/vocab.txt", "input_example.json"} <= set(files)
    mlmodel = yaml.safe_load((folder / "MLmodel").read_text())
    pyfunc = mlmodel["flavors"]["python_function"]
    assert pyfunc["model_code_path"].endswith("mlflow_model.py")
    assert "python_model" not in pyfunc  # no pickled PythonModel
    assert json.loads(mlmodel["signature"]["inputs"]) == [{"type": "string", "required": True}]
    assert json.loads(mlmodel["signature"]["outputs"]) == [{"type": "double", "required": True}]


LOADER = textwrap.dedent(
    """
    import json, sys
    import mlflow, pandas as pd

    mlflow.set_tracking_uri(sys.argv[1])
    model = mlflow.pyfunc.load_model(f"runs:/{sys.argv[2]}/model")
    sentences = json.loads(sys.argv[3])
    print(json.dumps({
        "list": list(model.predict(sentences)),
        "frame": list(model.predict(pd.DataFrame({"text": sentences}))),
        "string": list(model.predict(sentences[1])),
        "loaded": sorted(m for m in sys.modules if m.startswith("ptblm")),
    }))
    """
)


def test_a_fresh_process_loads_it_and_predicts(tracked: dict, tmp_path: Path) -> None:
    env = tool_env(None)  # no PYTHONPATH: ptblm comes from the model's own code
    env.pop("PYTHONPATH", None)
    done = run(
        [sys.executable, "-c", LOADER, tracked["uri"], tracked["run_id"], json.dumps(SENTENCES)],
        tmp_path,
        env=env,
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    want = expected(tracked["root"], SENTENCES)
    assert result["list"] == pytest.approx(want, rel=1e-6)
    assert result["frame"] == pytest.approx(want, rel=1e-6)
    assert result["string"] == pytest.approx(want[1:], rel=1e-6)
    assert "ptblm.score" in result["loaded"]


def post(url: str, payload: dict) -> tuple[int, dict]:
    request = urllib.request.Request(
        url, json.dumps(payload).encode(), {"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def test_mlflow_models_serve_answers_on_loopback(tracked: dict, tmp_path: Path) -> None:
    port = free_port()
    log = (tmp_path / "serve.log").open("w")
    server = subprocess.Popen(
        [
            sys.executable, "-m", "mlflow", "models", "serve",
            "-m", f"runs:/{tracked['run_id']}/model", "--env-manager", "local",
            "-h", "127.0.0.1", "-p", str(port), "-w", "1",
        ],
        env=tracked["env"],
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its workers too are stopped below
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{base}/ping", timeout=2):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError((tmp_path / "serve.log").read_text()) from None
                time.sleep(1)
        want = expected(tracked["root"], SENTENCES)
        status, body = post(f"{base}/invocations", {"inputs": SENTENCES})
        assert status == 200, body
        assert body["predictions"] == pytest.approx(want, rel=1e-6)
        status, body = post(f"{base}/invocations", {"inputs": SENTENCES[1]})  # one sentence
        assert status == 200, body
        assert body["predictions"] == pytest.approx(want[1:], rel=1e-6)
        status, body = post(f"{base}/invocations", {"inputs": ["the", "   "]})
        assert status == 400 and "line 2 is empty" in json.dumps(body)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=30)
        log.close()
