"""Training on a synthetic corpus: determinism, real kill -9 + resume, divergence, safe loading."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import PROJECT_ROOT, kill_after_epoch, tool_env

from ptblm.config import ModelConfig, TrainParams
from ptblm.data import load_corpus, prepare
from ptblm.train import (
    TrainingError,
    cpu_runs_bf16_lstm,
    load_model,
    save_model,
    set_precision,
    train,
)

TINY = ModelConfig(
    init_scale=0.1,
    learning_rate=1.0,
    max_grad_norm=5.0,
    num_layers=2,
    num_steps=10,
    hidden_size=16,
    max_epoch=2,
    max_max_epoch=3,
    keep_prob=0.8,  # dropout on, so resuming must restore the RNG stream too
    lr_decay=0.5,
    batch_size=10,
    vocab_size=40,
)


def write_corpus(root: Path, train_tokens: int = 4000, seed: int = 0) -> Path:
    """Text with learnable structure (a noisy cycle of words) so perplexity falls."""
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(30)]

    def text(n: int) -> str:
        out, i = [], 0
        for _ in range(n):
            i = (i + 1) % len(words) if rng.random() < 0.8 else rng.randrange(len(words))
            out.append(words[i] + (" \n " if rng.random() < 0.1 else " "))
        return "".join(out)

    text_dir = root / "text"
    text_dir.mkdir(parents=True)
    for split, n in (("train", train_tokens), ("valid", 800), ("test", 800)):
        (text_dir / f"ptb.{split}.txt").write_text(text(n), encoding="utf-8")
    prepare(text_dir, root / "data" / "prepared")
    return root / "data" / "prepared"


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
    with pytest.raises(TrainingError, match=r"at epoch 1, step \d+; training diverged"):
        train("tiny", exploding, TrainParams(device="cpu"), corpus, tmp_path / "ckpt.pt")


def test_vocab_size_smaller_than_corpus_is_refused(corpus, tmp_path):
    with pytest.raises(TrainingError, match="vocab_size = 10 is smaller"):
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
    assert "is for another run (differs in config)" in captured.out + captured.err


def test_model_file_for_other_config_or_vocab_is_refused(corpus, tmp_path):
    torch.manual_seed(0)
    result = train(
        "tiny", dataclasses.replace(TINY, max_max_epoch=1), TrainParams(), corpus, tmp_path / "c.pt"
    )
    path = tmp_path / "model.pt"
    save_model(path, result.model, "tiny", corpus)
    loaded = load_model(path, "tiny", result.model.config, corpus)
    for a, b in zip(loaded.state_dict().values(), result.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(TrainingError, match=r"'tiny': hidden_size=16 \(selected: 12\);"):
        load_model(path, "tiny", dataclasses.replace(result.model.config, hidden_size=12), corpus)
    with pytest.raises(TrainingError, match=r"config 'tiny' \(selected: 'other'\);"):
        load_model(path, "other", result.model.config, corpus)
    other_vocab = dataclasses.replace(corpus, vocab=[*corpus.vocab[:-1], "zzz"])
    with pytest.raises(TrainingError, match="another vocabulary"):
        load_model(path, "tiny", result.model.config, other_vocab)


def test_model_file_of_a_variant_loads_in_evaluate_and_another_variant_is_refused(tmp_path):
    """A tied GRU's model file through the real `evaluate` command: scored when the params
    match it, refused in one line naming the difference when they do not."""
    root = _project(tmp_path, epochs=1, cell="gru", tie_weights=True, dropout="variational")
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
        load_model(path, "tiny", TINY, corpus)
    assert not (tmp_path / "pwned").exists()


# --- the real thing: a training process killed with SIGKILL, then run again -------------


def _project(root: Path, epochs: int, **changes) -> Path:
    write_corpus(root, train_tokens=20_000)
    config = dataclasses.asdict(dataclasses.replace(TINY, max_max_epoch=epochs, **changes))
    params = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    params.update(model="tiny", models={"tiny": config})
    params["train"].update(device="cpu", num_threads=1)
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return root


def _train_cmd() -> list[str]:
    return [sys.executable, str(PROJECT_ROOT / "stages" / "train.py"), "--no-tracking"]


def _finished_outputs(root: Path) -> tuple[dict, str]:
    train_json = json.loads((root / "metrics" / "tiny" / "train.json").read_text())
    return train_json, (root / "metrics" / "tiny" / "history.csv").read_text()


def test_kill_9_then_rerun_resumes_and_matches_uninterrupted(tmp_path):
    epochs = 4
    straight = _project(tmp_path / "straight", epochs)
    subprocess.run(
        _train_cmd(), cwd=straight, env=tool_env(), check=True, capture_output=True, timeout=600
    )

    killed = _project(tmp_path / "killed", epochs)
    checkpoint = killed / "checkpoints" / "tiny" / "last.pt"
    kill_after_epoch(_train_cmd(), killed, checkpoint)
    assert not (killed / "metrics" / "tiny" / "train.json").exists()
    done = torch.load(checkpoint, weights_only=True)["epoch"]
    assert 2 <= done < epochs

    rerun = subprocess.run(
        _train_cmd(),
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


def test_bf16_on_a_cpu_without_bf16_lstm_is_one_clear_error(corpus, tmp_path):
    """oneDNN has no bfloat16 LSTM without AVX-512: say so up front, not deep inside a step."""
    cpu = torch.device("cpu")
    if cpu_runs_bf16_lstm():
        set_precision("bf16", cpu)  # this CPU has one: bf16 is allowed
        return
    with pytest.raises(TrainingError, match=r"train.precision = 'bf16'.*use fp32"):
        set_precision("bf16", cpu)
    settings = TrainParams(device="cpu", precision="bf16")
    with pytest.raises(TrainingError, match="AVX-512"):
        train("tiny", TINY, settings, corpus, tmp_path / "last.pt")
    assert not (tmp_path / "last.pt").exists()
