"""Training on a synthetic corpus: determinism, real kill -9 + resume, divergence, safe loading."""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import (
    PROJECT_ROOT,
    TINY_CONFIG,
    kill_after_epoch,
    tiny_workdir,
    tool_env,
    trained_perplexities,
    wait_for_epoch,
    write_corpus,
)

from ptblm.config import ModelConfig, TrainParams
from ptblm.data import DataError, load_corpus
from ptblm.device import cpu_runs_bf16_lstm, set_precision
from ptblm.epoch import perplexity
from ptblm.errors import TrainingError
from ptblm.model import PTBModel
from ptblm.modelfile import load_for_config, save_model
from ptblm.train import train

TINY = ModelConfig(**TINY_CONFIG)  # dropout on: resuming must restore the RNG stream too


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return load_corpus(write_corpus(tmp_path_factory.mktemp("corpus")))


def test_training_lowers_perplexity_and_is_deterministic(corpus, tmp_path):
    settings = TrainParams(seed=7, device="cpu")
    first = train("tiny", TINY, settings, corpus, tmp_path / "a.pt")
    second = train("tiny", TINY, settings, corpus, tmp_path / "b.pt")

    def learned(result):  # everything but the timings
        return [
            (r["epoch"], r["lr"], r["train_perplexity"], r["valid_perplexity"])
            for r in result.history
        ]

    assert learned(first) == learned(second)
    assert [r["lr"] for r in first.history] == [1.0, 1.0, 0.5]
    assert first.history[-1]["valid_perplexity"] < first.history[0]["valid_perplexity"] < 40
    other_seed = train("tiny", TINY, TrainParams(seed=8, device="cpu"), corpus, tmp_path / "c.pt")
    assert learned(other_seed) != learned(first)


def test_divergence_stops_with_epoch_and_step(corpus, tmp_path):
    exploding = dataclasses.replace(TINY, learning_rate=3e38, max_grad_norm=1e38, keep_prob=1.0)
    with pytest.raises(
        TrainingError, match=r"^epoch 1 train: loss is (nan|inf) at step \d+; training diverged"
    ):
        train("tiny", exploding, TrainParams(device="cpu"), corpus, tmp_path / "ckpt.pt")


def test_nan_in_validation_names_its_epoch_and_split(corpus, tmp_path):
    """A fault injected into validation only (the LSTM's output in eval mode made NaN)."""

    def nan_when_scoring(module, args, output):
        if isinstance(module, torch.nn.LSTM) and not module.training:
            return (torch.full_like(output[0], math.nan), output[1])
        return None

    hook = torch.nn.modules.module.register_module_forward_hook(nan_when_scoring)
    try:
        with pytest.raises(TrainingError, match=r"^epoch 1 valid: loss is nan at step 1; "):
            train("tiny", TINY, TrainParams(device="cpu"), corpus, tmp_path / "ckpt.pt")
    finally:
        hook.remove()
    assert perplexity(math.nan, 10) != perplexity(math.nan, 10)  # NaN, not inf
    assert perplexity(1e6, 10) == math.inf


def test_split_shorter_than_one_window_fails_before_training(corpus, tmp_path):
    too_long = dataclasses.replace(TINY, num_steps=100)  # train rows: 440 tokens, valid: 88
    with pytest.raises(DataError, match=r"^the valid split's .* shorter than one window"):
        train("tiny", too_long, TrainParams(device="cpu"), corpus, tmp_path / "ckpt.pt")
    assert not (tmp_path / "ckpt.pt").exists()


def test_vocab_size_smaller_than_corpus_is_refused(corpus, tmp_path):
    with pytest.raises(DataError, match="vocab_size = 10 is smaller"):
        train(
            "tiny", dataclasses.replace(TINY, vocab_size=10), TrainParams(), corpus, tmp_path / "x"
        )


def test_checkpoint_of_another_run_is_not_resumed(corpus, tmp_path, capsys):
    checkpoint = tmp_path / "last.pt"
    short = dataclasses.replace(TINY, max_max_epoch=1)
    train("tiny", short, TrainParams(device="cpu"), corpus, checkpoint)
    assert checkpoint.exists()
    result = train(
        "tiny", dataclasses.replace(short, hidden_size=12), TrainParams(), corpus, checkpoint
    )
    assert result.resumed_from_epoch == 0
    captured = capsys.readouterr()
    assert "written with other settings: hidden_size 16 (now 12); starting fresh" in captured.out


def test_checkpoint_from_other_code_or_data_is_not_resumed(corpus, tmp_path, capsys):
    """Resuming across a change of model.py (say) would mix two codes in one model."""
    checkpoint = tmp_path / "last.pt"
    short = dataclasses.replace(TINY, max_max_epoch=1)
    settings = TrainParams(device="cpu")

    def resumed(code: str, data=corpus) -> int:
        return train(
            "tiny", short, settings, data, checkpoint, code_version=code
        ).resumed_from_epoch

    assert not resumed("v1")
    after_one_epoch = checkpoint.read_bytes()
    assert resumed("v1") == 1  # the control: same code and data, resumed (nothing left to do)
    checkpoint.write_bytes(after_one_epoch)
    assert not resumed("v2")
    assert "written with other code; starting fresh" in capsys.readouterr().out
    checkpoint.write_bytes(after_one_epoch)
    other_ids = dict(corpus.splits, train=corpus.splits["train"].flip(0))  # same vocabulary
    assert not resumed("v1", dataclasses.replace(corpus, splits=other_ids))
    assert "written with other data; starting fresh" in capsys.readouterr().out


def test_a_checkpoint_that_cannot_be_read_for_io_reasons_is_not_thrown_away(corpus, tmp_path):
    """Only a torn or foreign file means "start over"; an I/O error surfaces."""
    checkpoint = tmp_path / "last.pt"
    checkpoint.mkdir()  # reading it fails with IsADirectoryError, an OSError
    with pytest.raises(IsADirectoryError):
        train("tiny", TINY, TrainParams(device="cpu"), corpus, checkpoint)


def test_a_torn_checkpoint_starts_fresh(corpus, tmp_path, capsys):
    checkpoint = tmp_path / "last.pt"
    short = dataclasses.replace(TINY, max_max_epoch=1)
    train("tiny", short, TrainParams(device="cpu"), corpus, checkpoint)
    checkpoint.write_bytes(checkpoint.read_bytes()[:1000])
    assert not train(
        "tiny", short, TrainParams(device="cpu"), corpus, checkpoint
    ).resumed_from_epoch
    assert "ignoring unreadable checkpoint" in capsys.readouterr().out


def test_model_file_for_other_config_or_vocab_is_refused(corpus, tmp_path):
    torch.manual_seed(0)
    result = train(
        "tiny", dataclasses.replace(TINY, max_max_epoch=1), TrainParams(), corpus, tmp_path / "c.pt"
    )
    path = tmp_path / "model.pt"
    save_model(path, result.model, "tiny", corpus)
    loaded = load_for_config(path, "tiny", result.model.config, corpus)
    for a, b in zip(loaded.state_dict().values(), result.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(TrainingError, match=r"'tiny': hidden_size=16 \(selected: 12\);"):
        load_for_config(
            path, "tiny", dataclasses.replace(result.model.config, hidden_size=12), corpus
        )
    with pytest.raises(TrainingError, match=r"config 'tiny' \(selected: 'other'\);"):
        load_for_config(path, "other", result.model.config, corpus)
    other_vocab = dataclasses.replace(corpus, vocab=[*corpus.vocab[:-1], "zzz"])
    with pytest.raises(TrainingError, match="another vocabulary"):
        load_for_config(path, "tiny", result.model.config, other_vocab)


def test_a_model_file_that_is_no_dict_or_has_unknown_keys_is_a_one_line_error(corpus, tmp_path):
    """Evaluate's loader and ptblm.load_model alike: no AttributeError, no TypeError."""
    from ptblm.api import ModelError, load_files

    torch.manual_seed(0)
    model = PTBModel(TINY)
    path = tmp_path / "model.pt"
    torch.save([1, 2, 3], path)
    with pytest.raises(TrainingError, match=r"model.pt: not a ptb-lm model file"):
        load_for_config(path, "tiny", TINY, corpus)
    with pytest.raises(ModelError, match=r"model.pt: not a ptb-lm model file"):
        load_files(path)
    save_model(path, model, "tiny", corpus)
    payload = torch.load(path, weights_only=True)
    payload["config"]["attention"] = True  # a switch a newer ptblm added
    torch.save(payload, path)
    newer = r"config has keys this ptblm does not know \(attention\).*upgrade ptblm"
    with pytest.raises(TrainingError, match=newer):
        load_for_config(path, "tiny", TINY, corpus)
    with pytest.raises(ModelError, match=newer):
        load_files(path)


def test_model_file_of_a_variant_loads_in_evaluate_and_another_variant_is_refused(tmp_path):
    """A tied GRU's model file through the real `evaluate` command: scored when the params
    match it, refused in one line naming the difference when they do not."""
    root = tiny_workdir(tmp_path, epochs=1, cell="gru", tie_weights=True, dropout="variational")
    corpus = load_corpus(root / "data" / "prepared")
    params = yaml.safe_load((root / "params.yaml").read_text())
    config = ModelConfig(**params["models"]["tiny"])
    torch.manual_seed(0)
    trained = train("tiny", config, TrainParams(device="cpu"), corpus, tmp_path / "c.pt")
    save_model(root / "models" / "tiny" / "model.pt", trained.model, "tiny", corpus)
    saved = torch.load(root / "models" / "tiny" / "model.pt", weights_only=True)["state_dict"]
    assert "embedding.weight" not in saved and "gru.0.weight_ih_l0" in saved  # tied: one entry

    evaluate = [sys.executable, str(PROJECT_ROOT / "stages" / "evaluate.py")]
    run = functools.partial(subprocess.run, cwd=root, env=tool_env(), capture_output=True)
    scored = run(evaluate, text=True, timeout=300)
    assert scored.returncode == 0, scored.stderr
    assert json.loads((root / "metrics" / "tiny" / "eval.json").read_text())["test_perplexity"] < 40

    params["models"]["tiny"].update(cell="lstm", tie_weights=False)
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    refused = run(evaluate, text=True, timeout=300)
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines() == [
        f"Error: {Path('models/tiny/model.pt')}: trained with another config than the selected "
        "'tiny': cell='gru' (selected: 'lstm'), tie_weights=True (selected: False); "
        "train this config first (dvc repro)"
    ]


class Exploit:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_loading_never_unpickles_arbitrary_objects(corpus, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "model.pt"
    torch.save({"format": 1, "payload": Exploit()}, path)
    with pytest.raises(TrainingError, match="not a ptb-lm model file"):
        load_for_config(path, "tiny", TINY, corpus)
    assert not (tmp_path / "pwned").exists()


# --- the real thing: a training process killed with SIGKILL, then run again -------------


def train_cmd(tracking: bool = False) -> list[str]:
    flag = "--tracking" if tracking else "--no-tracking"
    return [sys.executable, str(PROJECT_ROOT / "stages" / "train.py"), flag]


def _finished_outputs(root: Path) -> tuple[dict, str]:
    train_json = json.loads((root / "metrics" / "tiny" / "train.json").read_text())
    return train_json, (root / "plots" / "tiny" / "history.csv").read_text()


@pytest.mark.e2e
def test_kill_9_then_rerun_resumes_and_matches_uninterrupted(tmp_path):
    epochs = 4
    straight = tiny_workdir(tmp_path / "straight", epochs)
    subprocess.run(
        train_cmd(), cwd=straight, env=tool_env(), check=True, capture_output=True, timeout=600
    )

    killed = tiny_workdir(tmp_path / "killed", epochs)
    checkpoint = kill_after_epoch(train_cmd(), killed, killed / "checkpoints" / "tiny")
    assert not (killed / "metrics" / "tiny" / "train.json").exists()
    done = torch.load(checkpoint, weights_only=True)["epoch"]
    assert 2 <= done < epochs

    rerun = subprocess.run(
        train_cmd(),
        cwd=killed,
        env=tool_env(),
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    assert f"resuming tiny after epoch {done}" in rerun.stderr + rerun.stdout
    assert _finished_outputs(killed) == _finished_outputs(straight)  # bit-identical on CPU
    assert not checkpoint.exists(), "a finished run cleans up its checkpoint"


def test_bf16_probe_leaves_the_seeded_rng_alone():
    torch.manual_seed(0)
    expected = torch.rand(3)
    cpu_runs_bf16_lstm.cache_clear()
    torch.manual_seed(0)
    cpu_runs_bf16_lstm()
    assert torch.equal(torch.rand(3), expected)


def test_bf16_on_cpu_runs_near_fp32_or_is_one_clear_error(corpus, tmp_path):
    """With oneDNN's bfloat16 LSTM (AVX-512) bf16 scores a trained model within 2% of fp32;
    without it, one clear error up front, not a crash deep inside a step."""
    cpu = torch.device("cpu")
    if cpu_runs_bf16_lstm():
        fp32, bf16 = trained_perplexities(cpu, "bf16")
        assert fp32 < 20  # it learned the stream (uniform would be 200)
        assert bf16 == pytest.approx(fp32, rel=2e-2) and bf16 != fp32  # bf16 really ran
        return
    with pytest.raises(TrainingError, match=r"train.precision = 'bf16'.*use fp32"):
        set_precision("bf16", cpu)
    settings = TrainParams(device="cpu", precision="bf16")
    with pytest.raises(TrainingError, match="AVX-512"):
        train("tiny", TINY, settings, corpus, tmp_path / "last.pt")
    assert not (tmp_path / "last.pt").exists()


def _grandchildren(pid: int) -> list[int]:
    """The processes two levels under `pid` (under torchrun, its workers), from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(stat.parent.name))
    return [g for child in children.get(pid, []) for g in children.get(child, [])]


@pytest.mark.e2e
def test_a_rank_killed_with_kill_9_restarts_the_group_from_the_checkpoint(tmp_path):
    """train.nproc_per_node 2 with max_restarts 1: torchrun restarts both gloo ranks, which
    resume from rank 0's checkpoint; one FINISHED MLflow run with every epoch once."""
    from mlflow.tracking import MlflowClient

    epochs = 6
    root = tiny_workdir(tmp_path / "ddp", epochs)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["train"].update(nproc_per_node=2, max_restarts=1)
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    proc = subprocess.Popen(
        train_cmd(tracking=True), cwd=root, env=tool_env(), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    wait_for_epoch(proc, root / "checkpoints" / "tiny")
    workers = _grandchildren(proc.pid)
    assert len(workers) == 2, workers
    os.kill(workers[-1], signal.SIGKILL)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    assert "resuming tiny after epoch" in out
    store = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    (run,) = store.search_runs([store.get_experiment_by_name("ptb-lm").experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.tags["resumed"] == "True" and run.data.tags["processes"] == "2"
    history = store.get_metric_history(run.info.run_id, "valid_perplexity")
    assert sorted(m.step for m in history) == list(range(1, epochs + 1))  # each epoch once
    assert json.loads((root / "metrics" / "tiny" / "train.json").read_text())["epochs"] == epochs


@pytest.mark.e2e
def test_killing_the_train_stage_ends_its_ranks_and_the_rerun_resumes_exactly(tmp_path):
    """kill -9 of the stage (not of torchrun): no rank goes on without it; the rerun resumes
    from rank 0's checkpoint and, dropout on, ends where an uninterrupted 2-process run does."""
    roots = {}
    for name in ("straight", "killed"):
        roots[name] = tiny_workdir(tmp_path / name, 4)
        params = yaml.safe_load((roots[name] / "params.yaml").read_text())
        params["train"].update(nproc_per_node=2)
        (roots[name] / "params.yaml").write_text(yaml.safe_dump(params))
    run = functools.partial(subprocess.run, train_cmd(), env=tool_env(), check=True, text=True)
    run(cwd=roots["straight"], capture_output=True, timeout=600)
    proc = subprocess.Popen(train_cmd(), cwd=roots["killed"], env=tool_env())
    wait_for_epoch(proc, roots["killed"] / "checkpoints" / "tiny")
    ranks = _grandchildren(proc.pid)
    assert len(ranks) == 2
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    for pid in ranks:  # torchrun got SIGTERM with its parent and stopped them
        for _ in range(100):
            if not Path(f"/proc/{pid}").exists():
                break
            time.sleep(0.1)
        assert not Path(f"/proc/{pid}").exists(), f"rank {pid} outlived the killed stage"
    rerun = run(cwd=roots["killed"], capture_output=True, timeout=600)
    assert "resuming tiny after epoch" in rerun.stdout + rerun.stderr
    straight, killed = (_finished_outputs(roots[name]) for name in ("straight", "killed"))
    assert killed == straight


def test_without_a_terminal_a_long_pass_prints_plain_progress_lines(monkeypatch, capsys):
    """No progress bar without a terminal (nohup, CI, a queue's log): a plain line on stdout
    every PROGRESS_EVERY_S instead (here: at every refresh), and none on a terminal."""
    import ptblm.epoch
    from ptblm.data import batchify
    from ptblm.epoch import train_epoch
    from ptblm.step import TrainStep

    monkeypatch.setattr(ptblm.epoch, "PROGRESS_EVERY_S", 0.0)
    torch.manual_seed(0)
    model = PTBModel(TINY)
    data = batchify(torch.randint(0, TINY.vocab_size, (2001,)), TINY.batch_size)  # 20 windows
    train_epoch(model, data, TINY.num_steps, TrainStep(model, "fp32"), desc="epoch 1 train")
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("  epoch 1 train: step 1/19 (5%), ppl ")
    assert len(lines) == 18  # every step but the last, which the epoch's own line reports
    train_epoch(model, data, TINY.num_steps, TrainStep(model, "fp32"), quiet=True)
    assert capsys.readouterr().out == ""  # ranks other than 0 say nothing
