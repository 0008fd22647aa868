"""The TF `reader.py` semantics: tokens, vocabulary, id arrays, and `ptb_producer` batching."""

from __future__ import annotations

import collections
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import PtblmError
from .fsutil import atomic_dir

EOS = "<eos>"
SPLITS = ("train", "valid", "test")  # data/ptb/ptb.<split>.txt
ID_DTYPE = np.uint16  # 10,000 words fit; halves the size of int32 arrays


class DataError(PtblmError):
    """Input text or prepared files that cannot be used; the message says which and why."""


def read_tokens(path: Path) -> list[str]:
    """Tokens of one split: newlines become <eos>, then split on whitespace."""
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: not found; run the extract stage first") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{path}: not UTF-8 text (bad byte at offset {exc.start}); "
            "the file is corrupt: fetch and extract again"
        ) from None
    tokens = text.replace("\n", EOS).split()
    if not tokens:
        raise DataError(f"{path}: no tokens (empty file); fetch and extract again")
    return tokens


def build_vocab(tokens: list[str]) -> list[str]:
    """Words sorted by (-count, word); a word's id is its rank."""
    counts = collections.Counter(tokens)
    return [word for word, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]


def encode(tokens: list[str], word_to_id: dict[str, int]) -> tuple[np.ndarray, int]:
    """Ids of the in-vocabulary tokens, and how many were dropped (TF drops OOV words)."""
    ids = [word_to_id[w] for w in tokens if w in word_to_id]
    return np.asarray(ids, dtype=ID_DTYPE), len(tokens) - len(ids)


def vocab_fingerprint(vocab: list[str]) -> str:
    """Identifies a vocabulary, so a checkpoint is never used with ids it was not trained on."""
    return hashlib.sha256("\n".join(vocab).encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Corpus:
    vocab: list[str]
    splits: dict[str, torch.Tensor]  # int64 ids per split

    @property
    def fingerprint(self) -> str:
        return vocab_fingerprint(self.vocab)

    def ids_fingerprint(self) -> str:
        """Identifies the id arrays themselves (same vocabulary, other text: another hash)."""
        digest = hashlib.sha256()
        for split in SPLITS:
            digest.update(split.encode())
            digest.update(self.splits[split].numpy().tobytes())
        return digest.hexdigest()


def prepare(text_dir: Path, out_dir: Path) -> dict:
    """Read the three splits, write vocab.txt + <split>.npy + meta.json; return the stats."""
    tokens = {split: read_tokens(Path(text_dir) / f"ptb.{split}.txt") for split in SPLITS}
    vocab = build_vocab(tokens["train"])
    if len(vocab) > np.iinfo(ID_DTYPE).max + 1:
        raise DataError(f"vocabulary of {len(vocab)} words does not fit {ID_DTYPE.__name__} ids")
    word_to_id = {w: i for i, w in enumerate(vocab)}
    stats: dict = {"vocab_size": len(vocab), "tokens": {}, "oov": {}}
    with atomic_dir(out_dir) as tmp:
        for split in SPLITS:
            ids, oov = encode(tokens[split], word_to_id)
            np.save(tmp / f"{split}.npy", ids, allow_pickle=False)
            stats["tokens"][split] = int(ids.size)
            stats["oov"][split] = oov
        (tmp / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
        meta = {"vocab_fingerprint": vocab_fingerprint(vocab), **stats}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return stats


def read_vocab(path: Path) -> list[str]:
    """The words of a vocab.txt as `prepare` writes it: one a line, a word's id its line's
    index. A missing file raises FileNotFoundError, for the caller to say what to run."""
    return Path(path).read_text(encoding="utf-8").split("\n")[:-1]


def load_corpus(prepared_dir: Path) -> Corpus:
    """Load what `prepare` wrote; milliseconds, no pickle."""
    vocab = load_vocab(prepared_dir)
    return Corpus(vocab=vocab, splits={split: load_split(prepared_dir, split) for split in SPLITS})


def load_vocab(prepared_dir: Path) -> list[str]:
    """The prepared vocabulary alone."""
    try:
        return read_vocab(Path(prepared_dir) / "vocab.txt")
    except (FileNotFoundError, ValueError) as exc:
        raise _unprepared(prepared_dir, exc) from None


def load_split(prepared_dir: Path, split: str) -> torch.Tensor:
    """One split's ids (int64), reading that split's file only."""
    try:
        ids = np.load(Path(prepared_dir) / f"{split}.npy", allow_pickle=False)
    except (FileNotFoundError, ValueError) as exc:
        raise _unprepared(prepared_dir, exc) from None
    return torch.from_numpy(ids.astype(np.int64))


def _unprepared(prepared_dir: Path, exc: Exception) -> DataError:
    return DataError(
        f"{prepared_dir}: prepared data missing or unreadable ({exc}); run the prepare stage"
    )


def batchify(ids: torch.Tensor, batch_size: int) -> torch.Tensor:
    """`ptb_producer`'s layout: the first batch_size*batch_len ids as [batch_size, batch_len]."""
    require_rows("given", ids.numel(), batch_size)
    batch_len = ids.numel() // batch_size
    return ids[: batch_size * batch_len].view(batch_size, batch_len)


def epoch_size(num_tokens: int, batch_size: int, num_steps: int) -> int:
    return (num_tokens // batch_size - 1) // num_steps


def require_vocab_fits(config_name: str, vocab_size: int, prepared_words: int) -> None:
    if prepared_words > vocab_size:
        raise DataError(
            f"params: models.{config_name}.vocab_size = {vocab_size} is smaller than the "
            f"prepared vocabulary ({prepared_words} words); set it to {prepared_words}"
        )


def require_rows(split: str, num_tokens: int, batch_size: int) -> None:
    """Scoring carries state along rows of at least two tokens (one context, one predicted)."""
    if num_tokens // batch_size < 2:
        raise DataError(
            f"{num_tokens} tokens of the {split} split are too few for batch_size {batch_size}; "
            "use a smaller batch_size"
        )


def require_windows(split: str, num_tokens: int, batch_size: int, num_steps: int) -> None:
    """A split that holds no whole window would train or score nothing (and divide by zero)."""
    if epoch_size(num_tokens, batch_size, num_steps) < 1:
        raise DataError(
            f"the {split} split's {num_tokens:,} tokens give rows of {num_tokens // batch_size} "
            f"at batch_size {batch_size}, shorter than one window (num_steps {num_steps} + 1); "
            "lower batch_size or num_steps"
        )


def iterate_batches(
    data: torch.Tensor, num_steps: int, include_tail: bool = False
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (x, y) windows of `num_steps` with y shifted one step right, in order.

    `include_tail` adds the last, shorter window, so every token but the first of
    each row is predicted once: with state carried, that scores a split exactly as
    the tutorial's num_steps=1 evaluation does, in far fewer calls.
    """
    batch_len = data.size(1)
    steps = (batch_len - 1) // num_steps
    for i in range(steps):
        start = i * num_steps
        yield data[:, start : start + num_steps], data[:, start + 1 : start + num_steps + 1]
    tail = steps * num_steps
    if include_tail and tail < batch_len - 1:
        yield data[:, tail:-1], data[:, tail + 1 :]
