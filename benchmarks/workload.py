"""What every benchmark candidate trains on and scores, and the device sync its timing needs."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from ptblm.data import load_corpus

ROOT = Path(__file__).resolve().parents[1]
PREPARED = ROOT / "data" / "prepared"
TRAIN_TOKENS = 929_589  # the train split (docs/reproduction.md): epoch times for the real epoch


@dataclass(frozen=True)
class Workload:
    """What every candidate trains on and scores: the same tokens, on one device."""

    device: torch.device
    train_ids: torch.Tensor
    eval_ids: torch.Tensor
    source: str  # "PTB" or "synthetic"


def load_workload(device: torch.device, vocab_size: int, seed: int) -> Workload:
    """Real PTB ids when data/prepared exists (they set the softmax's input), else uniform ids."""
    if (PREPARED / "train.npy").exists():
        corpus = load_corpus(PREPARED)
        return Workload(device, corpus.splits["train"], corpus.splits["test"], "PTB")
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(vocab_size, (TRAIN_TOKENS,), generator=generator)
    return Workload(device, ids, ids[:82_430], "synthetic (uniform ids)")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def windows(data: torch.Tensor, num_steps: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(x, y) windows in order, wrapping around, for as many steps as asked."""
    steps = (data.size(1) - 1) // num_steps
    i = 0
    while True:
        start = (i % steps) * num_steps
        yield data[:, start : start + num_steps], data[:, start + 1 : start + num_steps + 1]
        i += 1
