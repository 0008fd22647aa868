"""`ptblm score`: the log-probability and perplexity a trained model gives to sentences.

Each sentence on its own (the default): from the zero state, conditioned on a leading
<eos> (every corpus sentence follows one), every word and the closing <eos> predicted.
Sentences are scored in padded batches, the padding masked out. `carry_state` scores the
lines as one stream through `evaluate_split`, exactly as `ptblm evaluate` scores a split.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

import torch

from .api import LanguageModel
from .epoch import evaluate_split, perplexity
from .errors import PtblmError
from .text import EOS, UNK, normalize

TOKENS_PER_BATCH = 2048  # padded tokens per forward pass: [2048, vocab] logits, ~80 MB


class ScoreError(PtblmError):
    """Input that cannot be scored; the message names the line and the fix."""


@dataclass(frozen=True)
class Sentence:
    """One input line as the model reads it."""

    line: int  # 1-based line number in the input
    text: str
    words: list[str]  # after normalization, before OOV words become <unk>
    oov: list[str]


@dataclass(frozen=True)
class Score:
    line: int | None  # None: the total
    words: int
    oov: int
    logprob: float  # natural log, words and closing <eos> of each sentence
    perplexity: float
    text: str = ""


def read_lines(data: bytes, source: str) -> list[str]:
    """The input's lines; binary or non-UTF-8 input is refused, naming the first bad line."""
    for number, raw in enumerate(data.split(b"\n"), start=1):
        if b"\0" in raw:
            raise ScoreError(f"{source}: line {number} holds binary data (a NUL byte); give text")
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ScoreError(f"{source}: line {number} is not UTF-8 text; convert it") from None
    lines = data.decode("utf-8").splitlines()
    if not lines:
        raise ScoreError(f"{source}: no input; give one sentence per line")
    return lines


def parse(
    lines: Sequence[str], vocab: Sequence[str], normalized: bool = True, skip_empty: bool = False
) -> list[Sentence]:
    """Every line checked before any is scored: an empty one stops it all, with its number,
    unless `skip_empty` (then it is left out; the others keep their line numbers)."""
    known = set(vocab)
    sentences = []
    for number, text in enumerate(lines, start=1):
        words = normalize(text, known) if normalized else text.split()
        if not words and skip_empty:
            continue
        if not words:
            what = "is empty" if not text.strip() else "has no words once normalized"
            raise ScoreError(
                f"line {number} {what}; give one sentence per line, or --skip-empty to leave "
                "such lines out"
            )
        oov = [w for w in words if w not in known]
        if oov and UNK not in known:
            raise ScoreError(
                f"line {number}: {' '.join(oov)} not in the vocabulary, which has no {UNK} "
                "to score them as; leave them out"
            )
        sentences.append(Sentence(number, text, words, oov))
    if not sentences:
        raise ScoreError("every line is empty or has no words once normalized; nothing to score")
    return sentences


# A sentence this much out of vocabulary is mostly <unk>s, which a PTB model predicts often
# (<unk> is 4.8% of ptb.train.txt's tokens, second only to "the"): its perplexity says how
# likely a run of unknown words is, not how likely the sentence is.
MOSTLY_OOV = 0.5


def mostly_oov(sentences: Iterable[Sentence], share: float = MOSTLY_OOV) -> list[Sentence]:
    """The sentences with more than `share` of their words out of vocabulary."""
    return [s for s in sentences if len(s.oov) > share * len(s.words)]


def _ids(sentence: Sentence, word_to_id: dict[str, int]) -> list[int]:
    unk = word_to_id.get(UNK)  # parse refused OOV words where the vocabulary has no <unk>
    return [word_to_id.get(w, unk) for w in sentence.words]


def sentence_logprobs(
    lm: LanguageModel, sentences: Sequence[Sentence], device: torch.device | str = "cpu"
) -> list[float]:
    """Natural-log probability of each sentence scored on its own (module doc), batched by
    length so little is padding."""
    word_to_id = lm.word_to_id
    eos = word_to_id[EOS]
    ids = [_ids(s, word_to_id) for s in sentences]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    out = [0.0] * len(ids)
    model = lm.model.eval()
    start = 0
    while start < len(order):
        longest = len(ids[order[start]]) + 1
        size = 1
        while start + size < len(order):
            longest = len(ids[order[start + size]]) + 1
            if (size + 1) * longest > TOKENS_PER_BATCH:
                break
            size += 1
        rows = order[start : start + size]
        width = max(len(ids[i]) for i in rows) + 1
        x = torch.full((size, width), eos, dtype=torch.long)
        y = torch.full((size, width), eos, dtype=torch.long)
        mask = torch.zeros((size, width), dtype=torch.bool)
        for row, i in enumerate(rows):
            n = len(ids[i])
            x[row, 1 : n + 1] = torch.tensor(ids[i])
            y[row, :n] = torch.tensor(ids[i])
            mask[row, : n + 1] = True
        x, y, mask = x.to(device), y.to(device), mask.to(device)
        with torch.no_grad():
            logits, _ = model(x, model.zero_state(size, device))
            logp = torch.log_softmax(logits.float(), dim=-1).gather(2, y.unsqueeze(2)).squeeze(2)
            sums = torch.where(mask, logp, 0.0).double().sum(dim=1).tolist()
        for row, i in enumerate(rows):
            out[i] = sums[row]
        start += size
    return out


def stream_ids(lm: LanguageModel, sentences: Sequence[Sentence]) -> torch.Tensor:
    """The sentences as one stream of ids, each closed by <eos>, for --carry-state."""
    word_to_id = lm.word_to_id
    stream = [i for s in sentences for i in (*_ids(s, word_to_id), word_to_id[EOS])]
    if len(stream) < 2:
        raise ScoreError("--carry-state needs at least two tokens in all; give more text")
    return torch.tensor(stream)


def score(
    lm: LanguageModel,
    sentences: Sequence[Sentence],
    device: torch.device | str = "cpu",
    carry_state: bool = False,
) -> tuple[list[Score], Score, float]:
    """Per-sentence scores (none with carry_state), the total, and tokens per second."""
    predicted = sum(len(s.words) + 1 for s in sentences)
    words = sum(len(s.words) for s in sentences)
    oov = sum(len(s.oov) for s in sentences)
    if carry_state:
        ids, where = stream_ids(lm, sentences), torch.device(device)
        result = evaluate_split(lm.model, ids, 1, where, desc="score")
        tokens = result.words  # every token but the first is predicted
        total = Score(None, words, oov, -math.log(result.perplexity) * tokens, result.perplexity)
        return [], total, result.words_per_sec
    start = time.perf_counter()
    logprobs = sentence_logprobs(lm, sentences, device)
    seconds = time.perf_counter() - start
    rows = [
        Score(s.line, len(s.words), len(s.oov), lp, perplexity(-lp, len(s.words) + 1), s.text)
        for s, lp in zip(sentences, logprobs, strict=True)
    ]
    total_lp = math.fsum(logprobs)
    total = Score(None, words, oov, total_lp, perplexity(-total_lp, predicted))
    return rows, total, predicted / seconds if seconds > 0 else float("inf")


def render(rows: Iterable[Score], total: Score, fmt: str) -> str:
    """table (aligned), csv, or jsonl; the total comes last, with `line` = total."""
    records = [{**asdict(r), "line": r.line if r.line is not None else "total"} for r in rows]
    records.append({**asdict(total), "line": "total"})
    columns = ["line", "words", "oov", "logprob", "perplexity", "text"]
    if fmt == "jsonl":
        return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    if fmt == "csv":
        import csv
        import io

        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(records)
        return buffer.getvalue()
    cells = [
        [str(r["line"]), str(r["words"]), str(r["oov"]), f"{r['logprob']:.4f}",
         f"{r['perplexity']:.4f}", r["text"]]
        for r in records
    ]  # fmt: skip
    header = ["line", "words", "oov", "log-prob", "perplexity", "text"]
    widths = [max(len(row[c]) for row in [header, *cells]) for c in range(5)]
    lines = [
        "  ".join(cell.rjust(w) for cell, w in zip(row[:5], widths, strict=True)) + "  " + row[5]
        for row in [header, *cells]
    ]
    return "\n".join(line.rstrip() for line in lines) + "\n"
