"""Test-time adaptation: the neural cache, dynamic evaluation, tuning on valid only, the stage."""

from __future__ import annotations

import json
import math
import os
import sqlite3
import sys
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner
from conftest import UNIT_CONFIG, copy_project, dvc, run, tiny_workdir, tool_env

from ptblm.adapt import CacheChoice, cache_logprobs, stream_perplexity
from ptblm.cache import cache_probs, distribution, mix, read_stream
from ptblm.cli import main
from ptblm.dynamic import DynamicSettings, dynamic_logprobs, gradient_rms
from ptblm.epoch import evaluate_split
from ptblm.model import PTBModel

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def model() -> PTBModel:
    torch.manual_seed(0)
    return PTBModel(UNIT_CONFIG).eval()


def token_ids(n: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(
        0, UNIT_CONFIG.vocab_size, (n,), generator=torch.Generator().manual_seed(seed)
    )


def test_cache_weight_zero_gives_exactly_the_static_perplexity(model):
    stream = read_stream(model, token_ids(300), CPU)
    probs = cache_probs(stream, [0.5], window=50)[0]
    assert torch.equal(mix(stream.logp, probs, 0.0), stream.logp)
    assert mix(stream.logp, probs, 0.3).sum() != stream.logp.sum()  # the cache does something
    # and the stream is read as evaluate reads a split
    static = evaluate_split(model, token_ids(300), 1, CPU).perplexity
    assert stream_perplexity(stream.logp) == pytest.approx(static, rel=1e-6)


@pytest.mark.parametrize("theta, weight, window", [(0.5, 0.3, 7), (2.0, 0.9, 40)])
def test_the_mixed_distribution_sums_to_one_and_gives_the_scored_probability(
    model, theta, weight, window
):
    """At every position the whole mixture (model softmax + cache over the window's past
    states) sums to 1, and its probability of the target is the one the fast path scores:
    a window that let position t see its own target would differ here."""
    ids = token_ids(120)
    stream = read_stream(model, ids, CPU)
    fast = mix(stream.logp, cache_probs(stream, [theta], window, chunk=16)[0], weight)
    with torch.no_grad():
        logits = model.softmax(stream.hidden)
    for t in range(len(stream)):
        first = max(0, t - window)
        dist = distribution(
            logits[t],
            stream.hidden[first:t],
            stream.targets[first:t],
            stream.hidden[t],
            theta,
            weight,
        )
        assert dist.sum().item() == pytest.approx(1.0, abs=1e-12)
        assert math.log(dist[stream.targets[t]]) == pytest.approx(fast[t].item(), abs=1e-5)


def test_the_cache_never_reads_ahead(model):
    """Changing the words after position k changes no probability at or before k."""
    ids = token_ids(200)
    changed = ids.clone()
    changed[120:] = token_ids(80, seed=7)
    choice = CacheChoice(window=30, theta=1.0, weight=0.4)
    a = cache_logprobs(read_stream(model, ids, CPU), choice)
    b = cache_logprobs(read_stream(model, changed, CPU), choice)
    assert torch.equal(a[:119], b[:119])  # position 118 predicts ids[119]
    assert not torch.equal(a[119:], b[119:])


@pytest.mark.parametrize("rule", ["sgd", "rms"])
def test_dynamic_learning_rate_zero_gives_the_static_perplexity(model, rule):
    ids = token_ids(400)
    rms = gradient_rms(model, token_ids(2000, seed=3), 4, 5, CPU)
    static = read_stream(model, ids, CPU).logp
    settings = DynamicSettings(learning_rate=0.0, decay=0.01, segment=5, rule=rule)
    adapted = dynamic_logprobs(model, ids, settings, rms, CPU)
    # the same sums in float32 but for the autograd path's kernels: far below any learning
    assert (adapted - static).abs().max().item() < 1e-5
    moved = dynamic_logprobs(model, ids, DynamicSettings(1e-4, 0.01, 5, rule), rms, CPU)
    assert (moved - static).abs().max().item() > 1e-4


@pytest.mark.parametrize("rule, lr", [("sgd", 1.0), ("rms", 3e-3)])
def test_a_repeated_sequence_scores_far_better_the_second_time_and_nothing_peeks(model, rule, lr):
    """A sequence over 5 of the 30 words, twice: adapting along the first occurrence, the
    model learns what this text is like, so the repeat scores far better than the first
    occurrence and than the static model does it."""
    first = torch.randint(0, 5, (100,), generator=torch.Generator().manual_seed(1))
    ids = torch.cat([first, first])
    rms = gradient_rms(model, token_ids(2000, seed=3), 4, 5, CPU)
    settings = DynamicSettings(learning_rate=lr, decay=0.0, segment=5, rule=rule)
    logp = dynamic_logprobs(model, ids, settings, rms, CPU)
    static = read_stream(model, ids, CPU).logp
    once, again = logp[:99], logp[100:]  # position 99 predicts the repeat's first word
    assert stream_perplexity(again) < 0.6 * stream_perplexity(once)
    assert stream_perplexity(again) < 0.5 * stream_perplexity(static[100:])
    # nothing learned before the first segment is scored
    assert (logp[:5] - static[:5]).abs().max().item() < 1e-5
    # no segment's score depends on the words after it
    changed = ids.clone()
    changed[100:] = token_ids(100, seed=9)
    other = dynamic_logprobs(model, changed, settings, rms, CPU)
    assert torch.equal(other[:99], logp[:99])  # scored before the update that learns ids[100]
    assert not torch.equal(other[99:], logp[99:])
    # the caller's model is not modified
    assert torch.equal(read_stream(model, ids, CPU).logp, static)


def test_a_cache_window_of_zero_is_a_one_line_params_error(tmp_path):
    params = yaml.safe_load((Path(__file__).parents[1] / "params.yaml").read_text())
    params["adapt"]["cache"]["window"] = 0
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    result = CliRunner().invoke(main, ["adapt", "--params", str(path)])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert lines == ["Error: params: adapt.cache.window = 0 is not allowed; it must be >= 1"], (
        result.output
    )


SMALL_GRID = {
    "cache": {"window": [20, 100], "theta": [0.1, 0.5], "weight": [0.0, 0.1, 0.3]},
    "dynamic": {"rule": "rms", "segment": 5, "epsilon": 2e-5,
                "learning_rate": [1e-4, 1e-3], "decay": [0.002]},
}  # fmt: skip


@pytest.mark.e2e
def test_tuning_reads_only_the_valid_split(tmp_path):
    """With the test split's file gone the stage still tunes both methods on valid, then
    stops at the test split with a one-line error and writes nothing."""
    root = tiny_workdir(tmp_path, epochs=2)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["adapt"] = SMALL_GRID
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    env = tool_env()
    run([sys.executable, "-m", "ptblm", "train", "--no-tracking"], root, env=env)
    (root / "data" / "prepared" / "test.npy").unlink()
    result = run([sys.executable, "-m", "ptblm", "adapt", "--no-tracking"], root, env, check=False)
    assert result.returncode == 1
    assert "dynamic 2/2" in result.stdout and "cache: window 100 done" in result.stdout
    assert result.stderr.strip().splitlines()[-1].startswith("Error: data/prepared:")
    assert "test.npy" in result.stderr
    assert not (root / "metrics" / "tiny" / "adapt.json").exists()
    assert not (root / "tuning").exists()


@pytest.mark.e2e
def test_dvc_exp_run_adapts_the_test_config_and_logs_it_to_its_mlflow_run(tmp_path, tiny_template):
    """The whole pipeline with the stage, on the tiny project's synthetic corpus."""
    repo = copy_project(tiny_template, tmp_path)
    env = tool_env(repo)
    sets = [
        "model=test",
        "adapt.cache.window=[50,200]",
        "adapt.dynamic.learning_rate=[1e-4,1e-3]",
        "adapt.dynamic.decay=2e-3",
    ]
    result = dvc(repo, "exp", "run", *(a for s in sets for a in ("-S", s)), env=env)
    assert "Running stage 'adapt'" in result.stdout
    assert result.stdout.index("Running stage 'evaluate'") < result.stdout.index(
        "Running stage 'adapt'"
    )
    adapted = json.loads((repo / "metrics" / "test" / "adapt.json").read_text())
    evaluated = json.loads((repo / "metrics" / "test" / "eval.json").read_text())
    assert adapted["model_md5"] == evaluated["model_md5"]
    assert adapted["static_test_perplexity"] == pytest.approx(
        evaluated["test_perplexity"], rel=1e-5
    )
    assert adapted["cache"]["window"] in (50, 200)
    assert adapted["dynamic"]["learning_rate"] in (1e-4, 1e-3)
    grid = (repo / "tuning" / "test" / "cache_grid.csv").read_text().splitlines()
    assert grid[0] == "window,theta,weight,valid_perplexity" and len(grid) == 1 + 2 * 5 * 6
    grid = (repo / "tuning" / "test" / "dynamic_grid.csv").read_text().splitlines()
    assert grid[0] == "learning_rate,decay,valid_perplexity" and len(grid) == 1 + 2

    run_id = json.loads((repo / "models" / "test" / "mlflow_run.json").read_text())["run_id"]
    with sqlite3.connect(repo / "mlflow.db") as db:
        metrics = dict(
            db.execute(
                "SELECT key, value FROM latest_metrics WHERE run_uuid = ?", (run_id,)
            ).fetchall()
        )
        status = db.execute("SELECT status FROM runs WHERE run_uuid = ?", (run_id,)).fetchone()
    for method in ("cache", "dynamic"):  # adapt.json rounds to 4 decimals
        logged = metrics[f"test_perplexity_{method}"]
        assert logged == pytest.approx(adapted[method]["test_perplexity"], abs=1e-4)
    assert "test_perplexity" in metrics
    assert status == ("FINISHED",)
    # the stage is a DVC stage like the others: nothing to do on a rerun
    again = dvc(repo, "repro", env=env)
    assert "Running stage" not in again.stdout
    assert os.path.getsize(repo / "timings" / "test" / "adapt.json") > 0
