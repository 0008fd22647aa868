"""The TF reader semantics on synthetic text: tokens, vocabulary, ids, ptb_producer batching."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

from ptblm.data import (
    EOS,
    DataError,
    batchify,
    build_vocab,
    encode,
    epoch_size,
    iterate_batches,
    load_corpus,
    prepare,
    read_tokens,
    vocab_fingerprint,
)

# PTB lines start and end with a space, so "\n" -> "<eos>" makes a token of its own.
TRAIN = " the cat sat on the mat \n the dog sat \n a cat \n"
VALID = " the cat ran \n"
TEST = " the zebra sat on a unicorn \n"


def write_splits(folder: Path, train: str = TRAIN, valid: str = VALID, test: str = TEST) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for split, text in (("train", train), ("valid", valid), ("test", test)):
        (folder / f"ptb.{split}.txt").write_text(text, encoding="utf-8")
    return folder


def test_read_tokens_turns_newlines_into_eos(tmp_path: Path) -> None:
    path = tmp_path / "t.txt"
    path.write_text(" a b \n c \n", encoding="utf-8")
    assert read_tokens(path) == ["a", "b", EOS, "c", EOS]


def test_read_tokens_keeps_tf_quirk_without_spaces(tmp_path: Path) -> None:
    # TF replaces "\n" before splitting: without the PTB spaces, <eos> glues onto words.
    path = tmp_path / "t.txt"
    path.write_text("a\nb\n", encoding="utf-8")
    assert read_tokens(path) == [f"a{EOS}b{EOS}"]


def test_vocabulary_is_sorted_by_count_then_word() -> None:
    tokens = ["b", "c", "a", "c", "b", "c", "d"]
    # c: 3, b: 2, then the tie a, d: 1 broken alphabetically
    assert build_vocab(tokens) == ["c", "b", "a", "d"]
    assert build_vocab(["z", "y", "z", "y", "x"]) == ["y", "z", "x"]


def test_vocab_of_synthetic_train_split(tmp_path: Path) -> None:
    write_splits(tmp_path)
    vocab = build_vocab(read_tokens(tmp_path / "ptb.train.txt"))
    assert vocab == [EOS, "the", "cat", "sat", "a", "dog", "mat", "on"]


def test_encode_drops_oov_words_and_counts_them() -> None:
    word_to_id = {"the": 0, "cat": 1, EOS: 2}
    ids, oov = encode(["the", "zebra", "cat", EOS, "unicorn"], word_to_id)
    assert ids.tolist() == [0, 1, 2]
    assert oov == 2


def test_prepare_writes_vocab_ids_and_meta(tmp_path: Path) -> None:
    text = write_splits(tmp_path / "ptb")
    out = tmp_path / "prepared"
    stats = prepare(text, out)
    vocab = [EOS, "the", "cat", "sat", "a", "dog", "mat", "on"]
    assert (out / "vocab.txt").read_text(encoding="utf-8") == "\n".join(vocab) + "\n"
    assert stats == {
        "vocab_size": 8,
        "tokens": {"train": 14, "valid": 3, "test": 5},
        "oov": {"train": 0, "valid": 1, "test": 2},
    }
    meta = json.loads((out / "meta.json").read_text(encoding="utf-8"))
    assert meta == {"vocab_fingerprint": vocab_fingerprint(vocab), **stats}
    ids = np.load(out / "test.npy", allow_pickle=False)
    assert ids.dtype == np.uint16
    # " the zebra sat on a unicorn \n": zebra and unicorn dropped, like TF's reader
    assert ids.tolist() == [1, 3, 7, 4, 0]
    corpus = load_corpus(out)
    assert corpus.vocab == vocab
    assert corpus.splits["valid"].dtype == torch.int64
    assert corpus.splits["valid"].tolist() == [1, 2, 0]
    assert corpus.fingerprint == meta["vocab_fingerprint"]
    assert {p.name for p in tmp_path.iterdir()} == {"ptb", "prepared"}  # no temp folders left


def test_prepare_output_has_the_usual_permissions(tmp_path: Path) -> None:
    # a temp folder is private (0700); the output it becomes must not be
    mask = os.umask(0o022)
    try:
        out = tmp_path / "prepared"
        prepare(write_splits(tmp_path / "ptb"), out)
    finally:
        os.umask(mask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o755


def test_prepare_replaces_an_older_output(tmp_path: Path) -> None:
    out = tmp_path / "prepared"
    out.mkdir()
    (out / "stale.bin").write_bytes(b"old")
    prepare(write_splits(tmp_path / "ptb"), out)
    assert sorted(p.name for p in out.iterdir()) == [
        "meta.json",
        "test.npy",
        "train.npy",
        "valid.npy",
        "vocab.txt",
    ]


@pytest.mark.parametrize("split", ["train", "valid", "test"])
def test_empty_split_fails_clearly_and_writes_nothing(tmp_path: Path, split: str) -> None:
    text = write_splits(tmp_path / "ptb", **{split: ""})
    out = tmp_path / "prepared"
    with pytest.raises(DataError) as info:
        prepare(text, out)
    message = str(info.value)
    assert f"ptb.{split}.txt" in message and "empty" in message and "\n" not in message
    assert not out.exists()
    assert {p.name for p in tmp_path.iterdir()} == {"ptb"}


def test_non_utf8_split_fails_clearly_and_writes_nothing(tmp_path: Path) -> None:
    text = write_splits(tmp_path / "ptb")
    (text / "ptb.valid.txt").write_bytes(b" the cat \n caf\xe9 \n")
    out = tmp_path / "prepared"
    with pytest.raises(DataError) as info:
        prepare(text, out)
    message = str(info.value)
    assert "ptb.valid.txt" in message and "UTF-8" in message and "offset 14" in message
    assert "\n" not in message
    assert not out.exists()
    assert {p.name for p in tmp_path.iterdir()} == {"ptb"}


def test_missing_split_names_the_file(tmp_path: Path) -> None:
    text = write_splits(tmp_path / "ptb")
    (text / "ptb.test.txt").unlink()
    with pytest.raises(DataError, match=r"ptb\.test\.txt: not found; run the extract stage"):
        prepare(text, tmp_path / "prepared")
    assert not (tmp_path / "prepared").exists()


def test_load_corpus_of_missing_folder_says_run_prepare(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="run the prepare stage"):
        load_corpus(tmp_path / "nothing")


def test_batchify_matches_ptb_producer_layout() -> None:
    ids = torch.arange(23)
    data = batchify(ids, 4)
    # batch_len = 23 // 4 = 5; the last 3 ids are dropped; row r holds ids[r*5:(r+1)*5]
    assert data.shape == (4, 5)
    assert data.tolist() == [list(range(r * 5, r * 5 + 5)) for r in range(4)]


def test_batchify_refuses_too_few_tokens() -> None:
    with pytest.raises(DataError, match="too few for batch_size 4"):
        batchify(torch.arange(7), 4)


@pytest.mark.parametrize(
    ("num_tokens", "batch_size", "num_steps", "expected"),
    [
        (100, 4, 3, 8),  # batch_len 25 -> (25 - 1) // 3
        (101, 4, 3, 8),
        (26 * 4, 4, 5, 5),  # batch_len 26 -> exactly 25 targets -> 5 windows
        (929_589, 20, 20, 2323),  # PTB train, small config (TF's epoch_size)
        (929_589, 20, 35, 1327),  # PTB train, medium/large
        (82_430, 1, 1, 82_429),  # PTB test, the tutorial's evaluation shape
    ],
)
def test_epoch_size_formula(num_tokens: int, batch_size: int, num_steps: int, expected: int):
    assert epoch_size(num_tokens, batch_size, num_steps) == expected
    data = batchify(torch.arange(num_tokens), batch_size)
    assert sum(1 for _ in iterate_batches(data, num_steps)) == expected


def test_iterate_batches_windows_and_shift_by_one() -> None:
    data = batchify(torch.arange(4 * 25), 4)
    n = 3
    batches = list(iterate_batches(data, n))
    assert len(batches) == epoch_size(100, 4, n) == 8
    for i, (x, y) in enumerate(batches):
        assert x.shape == y.shape == (4, n)
        assert torch.equal(x, data[:, i * n : (i + 1) * n])
        assert torch.equal(y, data[:, i * n + 1 : (i + 1) * n + 1])
        assert torch.equal(y[:, :-1], x[:, 1:])  # the target is the next token
    # ids are consecutive within a row, so every target is its input plus one
    assert all(torch.equal(y, x + 1) for x, y in batches)
    # 8 windows of 3 reach the row's last token: (25 - 1) // 3 leaves no tail here
    assert batches[-1][1][0, -1].item() == 24


def test_include_tail_predicts_every_token_once() -> None:
    data = batchify(torch.arange(4 * 25), 4)
    batches = list(iterate_batches(data, 7, include_tail=True))
    assert [x.shape[1] for x, _ in batches] == [7, 7, 7, 3]
    targets = torch.cat([y for _, y in batches], dim=1)
    inputs = torch.cat([x for x, _ in batches], dim=1)
    assert torch.equal(targets, data[:, 1:])  # every token but each row's first, once, in order
    assert torch.equal(inputs, data[:, :-1])


def test_include_tail_adds_nothing_when_windows_fit_exactly() -> None:
    data = batchify(torch.arange(2 * 7), 2)  # batch_len 7: six targets, two windows of 3
    assert len(list(iterate_batches(data, 3, include_tail=True))) == 2
    assert len(list(iterate_batches(data, 3))) == 2
