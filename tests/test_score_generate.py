"""`ptblm score`, `ptblm generate` and `ptblm.load_model` on a tiny trained model, and
`score --carry-state` against the real `ptblm evaluate` on PTB's test split."""

from __future__ import annotations

import io
import json
import math
import random
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from click.testing import CliRunner
from conftest import committed_params
from test_train import TINY

import ptblm
from ptblm import score as score_module
from ptblm.archive import extract_ptb
from ptblm.cli import main
from ptblm.config import TrainParams
from ptblm.data import load_corpus, prepare
from ptblm.fsutil import write_json
from ptblm.modelfile import save_model
from ptblm.text import normalize
from ptblm.train import train

WORDS = ["the", "company", "said", "it", "expects", "a", "loss", "N", "<unk>", "mr.", "'s"]
WORDS += ["n't", "did", "shares", "rose", "to", "$", "of", "million"]


def write_text_corpus(root: Path, seed: int = 0) -> Path:
    """A small corpus in PTB's vocabulary style (with <unk> and N), prepared."""
    rng = random.Random(seed)

    def text(n: int) -> str:
        ends = (" \n" if rng.random() < 0.12 else "" for _ in range(n))
        return " ".join(rng.choice(WORDS) + end for end in ends)

    (root / "text").mkdir(parents=True)
    for split, n in (("train", 4000), ("valid", 800), ("test", 800)):
        (root / "text" / f"ptb.{split}.txt").write_text(text(n) + " \n", encoding="utf-8")
    prepare(root / "text", root / "data" / "prepared")
    return root / "data" / "prepared"


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A project folder with data/prepared and models/tiny/model.pt."""
    root = tmp_path_factory.mktemp("trained")
    corpus = load_corpus(write_text_corpus(root))
    result = train("tiny", TINY, TrainParams(seed=3, device="cpu"), corpus, root / "ck.pt")
    save_model(root / "models" / "tiny" / "model.pt", result.model, "tiny", corpus)
    return root


def invoke(root: Path, monkeypatch, *args: str, stdin: bytes | None = None):
    monkeypatch.chdir(root)
    return CliRunner().invoke(main, list(args), input=stdin)


def direct_logprob(lm: ptblm.api.LanguageModel, words: list[str]) -> float:
    """One sentence through model.forward, the obvious way: <eos> w1..wn -> w1..wn <eos>."""
    ids = [lm.word_to_id.get(w, lm.word_to_id["<unk>"]) for w in words]
    eos = lm.word_to_id["<eos>"]
    x, y = torch.tensor([[eos, *ids]]), torch.tensor([ids + [eos]])
    with torch.no_grad():
        logits, _ = lm.model(x, lm.model.zero_state(1))
    return torch.log_softmax(logits.double(), -1)[0].gather(1, y.T).sum().item()


# --- normalization ------------------------------------------------------------------------


def test_typed_text_is_normalized_as_ptb_was_prepared() -> None:
    vocab = {"mr.", "u.s.", "the", "'s", "n't"}
    assert normalize("The company's shares didn't rise 5% to $12.50.", vocab) == [
        "the", "company", "'s", "shares", "did", "n't", "rise", "N", "N", "to", "$", "N",
    ]  # fmt: skip
    assert normalize('Mr. Smith said, "in the U.S. (mostly)"', vocab) == [
        "mr.", "smith", "said", "in", "the", "u.s.", "mostly",
    ]  # fmt: skip
    assert normalize("1,000 3.5 1/2 the 1980s 30-year <unk> N", vocab) == [
        "N", "N", "N", "the", "1980s", "30-year", "<unk>", "N",
    ]  # fmt: skip


def test_normalization_leaves_ptb_text_unchanged(shared_archive: Path, tmp_path: Path) -> None:
    extract_ptb(shared_archive, tmp_path)
    vocab = set((tmp_path / "ptb.train.txt").read_text().replace("\n", " <eos> ").split())
    for split in ("train", "valid", "test"):
        for line in (tmp_path / f"ptb.{split}.txt").read_text().splitlines():
            assert normalize(line, vocab) == line.split(), line


# --- score -----------------------------------------------------------------------------------


def test_each_sentence_scores_as_the_model_computes_it(trained: Path, monkeypatch) -> None:
    monkeypatch.setattr(score_module, "TOKENS_PER_BATCH", 24)  # several batches, padded
    lm = ptblm.load_model(trained / "models" / "tiny" / "model.pt")
    lines = [
        "the company said",
        "The shares rose 5% to $12 million.",
        "a",
        "Mr. Smith didn't expect a loss of the company 's shares",
        "zebra",
    ]
    rows, total, rate = score_module.score(lm, score_module.parse(lines, lm.vocab))
    assert [r.line for r in rows] == [1, 2, 3, 4, 5]
    for row, line in zip(rows, lines, strict=True):
        words = normalize(line, set(lm.vocab))
        assert row.words == len(words)
        assert row.logprob == pytest.approx(direct_logprob(lm, words), rel=1e-5)
        assert row.perplexity == pytest.approx(math.exp(-row.logprob / (len(words) + 1)))
    assert [r.oov for r in rows] == [0, 0, 0, 2, 1]  # smith, expect; zebra
    assert total.logprob == pytest.approx(sum(r.logprob for r in rows))
    tokens = sum(r.words + 1 for r in rows)
    assert total.perplexity == pytest.approx(math.exp(-total.logprob / tokens))
    assert rate > 0


def test_score_command_formats_and_normalization(trained: Path, monkeypatch) -> None:
    text = b"The company said it expects a loss.\nthe company said it expects a loss\n"
    args = ["score", "--model", "models/tiny/model.pt"]
    jsonl = invoke(trained, monkeypatch, *args, "--format", "jsonl", stdin=text)
    assert jsonl.exit_code == 0, jsonl.output
    records = [json.loads(line) for line in jsonl.stdout.splitlines()]
    assert [r["line"] for r in records] == [1, 2, "total"]
    assert records[0]["logprob"] == pytest.approx(records[1]["logprob"])  # normalized alike
    assert "words/s" in jsonl.stderr

    raw = invoke(trained, monkeypatch, *args, "--format", "csv", "--no-normalize", stdin=text)
    table = pd.read_csv(io.StringIO(raw.stdout))
    assert list(table["oov"]) == [2, 0, 2]  # "The" and "loss." are not words as given
    assert table["logprob"].iloc[0] != pytest.approx(table["logprob"].iloc[1])

    shown = invoke(trained, monkeypatch, *args, stdin=text)
    assert shown.stdout.splitlines()[0].split() == [
        "line", "words", "oov", "log-prob", "perplexity", "text",
    ]  # fmt: skip
    assert shown.stdout.splitlines()[-1].startswith("total")


@pytest.mark.parametrize(
    ("stdin", "args", "message"),
    [
        (b"the company\n\nsaid\n", [], "line 2 is empty"),
        (b"the company\n...\n", [], "line 2 has no words once normalized"),
        (b"the company\nsaid \x00\x01\x02\n", [], "line 2 holds binary data"),
        (b"the \xff\xfe company\n", [], "line 1 is not UTF-8"),
        (b"", [], "no input"),
        (None, ["missing.txt"], "missing.txt: cannot read"),
    ],
)
def test_bad_input_is_one_line_and_nothing_printed(
    trained: Path, monkeypatch, stdin, args, message
) -> None:
    result = invoke(
        trained, monkeypatch, "score", "--model", "models/tiny/model.pt", *args, stdin=stdin
    )
    assert result.exit_code == 1
    assert result.stdout == ""
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_skip_empty_leaves_empty_lines_out_and_keeps_the_line_numbers(
    trained: Path, monkeypatch
) -> None:
    args = ["score", "--model", "models/tiny/model.pt", "--format", "jsonl", "--skip-empty"]
    result = invoke(trained, monkeypatch, *args, stdin=b"the company\n\n...\nsaid it\n")
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["line"] for r in records] == [1, 4, "total"]
    assert records[-1]["words"] == 4
    assert "2 empty line(s) left out" in result.stderr
    nothing = invoke(trained, monkeypatch, *args, stdin=b"\n \n")
    assert nothing.exit_code == 1 and nothing.stdout == ""
    assert "nothing to score" in nothing.stderr


def test_mostly_oov_sentences_are_named_on_stderr_and_in_help(trained: Path, monkeypatch):
    text = b"Zyzzyva quux foobar.\nthe company said\nthe zebra\n"  # 3 of 3, 0 of 3, 1 of 2
    result = invoke(trained, monkeypatch, "score", "--model", "models/tiny/model.pt", stdin=text)
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and warnings[0].startswith("warning: line 1: 3 of 3 words")
    assert "<unk>" in warnings[0]
    rows = [line.split() for line in result.stdout.splitlines()[1:-1]]
    assert [row[2] for row in rows] == ["3", "0", "1"]  # the oov column, unchanged
    shown = invoke(trained, monkeypatch, "score", "--help")
    help_text = " ".join(shown.stdout.split())
    assert "made-up words" in help_text and "scored as <unk>" in help_text
    assert "--skip-empty" in help_text


def test_missing_model_is_one_line(trained: Path, monkeypatch) -> None:
    result = invoke(trained, monkeypatch, "score", "--model", "nope/model.pt", stdin=b"the\n")
    assert result.exit_code == 1 and "no such model file" in result.stderr


# --- generate --------------------------------------------------------------------------------


def test_generate_is_seeded_and_writes_eos_as_line_breaks(trained: Path, monkeypatch) -> None:
    args = ["generate", "--model", "models/tiny/model.pt", "--prompt", "The company"]

    def sample(seed: int) -> str:
        result = invoke(trained, monkeypatch, *args, "--words", "60", "--seed", str(seed))
        assert result.exit_code == 0, result.output
        return result.stdout

    first = sample(1)
    assert first == sample(1)
    assert first != sample(2)
    assert first.startswith("the company")
    assert "<eos>" not in first and first.count("\n") > 1  # eos is frequent in this corpus
    assert len(first.split()) == 2 + 60 - (first.count("\n") - 1)


def test_near_zero_temperature_is_the_argmax_continuation(trained: Path, monkeypatch) -> None:
    lm = ptblm.load_model(trained / "models" / "tiny" / "model.pt")
    ids, state, expected = [lm.word_to_id["<eos>"], lm.word_to_id["the"]], None, []
    state = lm.model.zero_state(1)
    with torch.no_grad():
        x = torch.tensor([ids])
        for _ in range(8):
            logits, state = lm.model(x, state)
            best = int(logits[0, -1].argmax())
            expected.append(lm.vocab[best])
            x = torch.tensor([[best]])
    from ptblm.generate import generate

    assert generate(lm, ["the"], 8, temperature=1e-6, seed=5) == expected
    assert generate(lm, ["the"], 8, temperature=0, seed=9) == expected


def test_oov_prompt_words_become_unk_with_a_note(trained: Path, monkeypatch) -> None:
    result = invoke(
        trained, monkeypatch, "generate", "--model", "models/tiny/model.pt",
        "--prompt", "the zebra said quagga", "--words", "3", "--top-k", "2",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("the <unk> said <unk>")
    assert result.stderr.strip() == "note: not in the vocabulary, read as <unk>: zebra quagga"
    bad = invoke(trained, monkeypatch, "generate", "--model", "models/tiny/model.pt",
                 "--temperature", "-1")  # fmt: skip
    assert bad.exit_code == 1 and "--temperature -1.0: must be 0" in bad.stderr


# --- load_model -----------------------------------------------------------------------------


def test_load_model_without_a_stored_vocabulary_checks_the_prepared_one(
    trained: Path, tmp_path: Path, monkeypatch
) -> None:
    """Model files written before the vocabulary went inside read data/prepared/vocab.txt,
    and only if it is the vocabulary they were trained on."""
    payload = torch.load(trained / "models" / "tiny" / "model.pt", weights_only=True)
    del payload["vocab"]
    torch.save(payload, tmp_path / "old.pt")
    monkeypatch.chdir(trained)
    model, vocab = ptblm.load_model(tmp_path / "old.pt")
    assert vocab == load_corpus(trained / "data" / "prepared").vocab
    (tmp_path / "data" / "prepared").mkdir(parents=True)
    (tmp_path / "data" / "prepared" / "vocab.txt").write_text("the\n<unk>\n<eos>\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ptblm.api.ModelError, match="not the one it was trained on"):
        ptblm.load_model(tmp_path / "old.pt")


# --- --carry-state is evaluate ----------------------------------------------------------------


@pytest.mark.e2e
def test_carry_state_total_equals_evaluate_on_the_test_split(
    shared_archive: Path, tmp_path: Path, monkeypatch
) -> None:
    """The `test` config (35 steps per window, so the epoch takes seconds) on real PTB."""
    extract_ptb(shared_archive, tmp_path / "data" / "ptb")
    prepare(tmp_path / "data" / "ptb", tmp_path / "data" / "prepared")
    params = committed_params()
    params["models"]["test"]["num_steps"] = 35
    params["tracking"]["enabled"] = False
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    for stage in ("train", "evaluate"):
        done = runner.invoke(main, [stage, "--model", "test"])
        assert done.exit_code == 0, done.output
    evaluated = json.loads((tmp_path / "metrics" / "test" / "eval.json").read_text())

    scored = runner.invoke(
        main, ["score", "--model", "test", "--carry-state", "--format", "jsonl",
               "data/ptb/ptb.test.txt"],
    )  # fmt: skip
    assert scored.exit_code == 0, scored.output
    (total,) = [json.loads(line) for line in scored.stdout.splitlines()]
    assert total["line"] == "total"
    assert total["perplexity"] == pytest.approx(evaluated["test_perplexity"], rel=1e-4)
    assert total["oov"] == 0 and total["words"] == 82430 - 3761  # test tokens less its <eos>


def test_carry_state_with_the_cache_or_dynamic_evaluation_uses_the_tuned_values(
    trained, monkeypatch
):
    """--cache / --dynamic take the adapt stage's choice from metrics/<config>/adapt.json and
    score the stream as `ptblm.adapt` does; a weight of 0 is the static score; an option of
    the other method, or the rms rule without its statistics, is a one-line error."""
    from ptblm.adapt import CacheChoice, adapted_logprobs, stream_perplexity
    from ptblm.dynamic import DynamicSettings, gradient_rms

    corpus = load_corpus(trained / "data" / "prepared")
    lm = ptblm.load_model(trained / "models" / "tiny" / "model.pt")
    ids = corpus.splits["test"][:300]
    text = " ".join(corpus.vocab[i] for i in ids.tolist()).replace(" <eos> ", "\n")
    (trained / "stream.txt").write_text(text, encoding="utf-8")
    chosen = {
        "cache": {"window": 50, "theta": 0.7, "weight": 0.2},
        "dynamic": {
            "learning_rate": 1e-3,
            "decay": 2e-3,
            "segment": 5,
            "rule": "rms",
            "epsilon": 1e-3,
        },
    }
    write_json(trained / "metrics" / "tiny" / "adapt.json", chosen)
    (trained / "params.yaml").write_text(yaml.safe_dump({**committed_params(), "model": "tiny"}))

    def total(*options: str) -> float:
        result = invoke(trained, monkeypatch, "score", "--model", "tiny", "--carry-state",
                        *options, "--format", "jsonl", "stream.txt")  # fmt: skip
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout.splitlines()[-1])["perplexity"]

    stream = torch.tensor([lm.word_to_id[w] for w in text.replace("\n", " <eos> ").split()])
    stream = torch.cat([stream, torch.tensor([lm.word_to_id["<eos>"]])])
    expected = stream_perplexity(
        adapted_logprobs(lm.model, stream, torch.device("cpu"), CacheChoice(50, 0.7, 0.2))
    )
    assert total("--cache") == pytest.approx(expected, rel=1e-9)
    assert total("--cache", "--cache-weight", "0") == pytest.approx(total(), rel=1e-6)
    assert total("--cache", "--cache-weight", "0.5") != pytest.approx(expected, rel=1e-6)

    sgd = DynamicSettings(1e-1, 2e-3, 5, "sgd")
    expected = stream_perplexity(adapted_logprobs(lm.model, stream, torch.device("cpu"), sgd))
    assert total("--dynamic", "--dynamic-rule", "sgd", "--dynamic-lr", "0.1") == pytest.approx(
        expected, rel=1e-9
    )
    failed = invoke(trained, monkeypatch, "score", "--model", "tiny", "--carry-state", "--dynamic",
                    "stream.txt")  # fmt: skip
    assert failed.exit_code == 1 and "gradient_rms.pt" in failed.output
    rms = gradient_rms(lm.model, corpus.splits["train"], 10, 5, torch.device("cpu"))
    names = [n for n, _ in lm.model.named_parameters()]
    torch.save(dict(zip(names, rms, strict=True)), trained / "models" / "tiny" / "gradient_rms.pt")
    rms_rule = DynamicSettings(1e-3, 2e-3, 5, "rms")
    expected = stream_perplexity(
        adapted_logprobs(lm.model, stream, torch.device("cpu"), rms_rule, rms)
    )
    assert total("--dynamic") == pytest.approx(expected, rel=1e-9)

    stray = invoke(trained, monkeypatch, "score", "--model", "tiny", "--carry-state",
                   "--cache-theta", "2", "stream.txt")  # fmt: skip
    assert stray.exit_code == 2 and "--cache-theta needs --cache" in stray.output
    alone = invoke(trained, monkeypatch, "score", "--model", "tiny", "--cache", "stream.txt")
    assert alone.exit_code == 2 and "add --carry-state" in alone.output
