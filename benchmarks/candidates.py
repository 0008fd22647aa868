"""The benchmark's candidates (the plain loop, ours in each precision, ours without CUDA
graphs) by name, and the `Trainer` that runs timed training steps of one of them."""

from __future__ import annotations

import time

import click
import torch

from plain import PlainModel
from ptblm.config import ModelConfig
from ptblm.data import batchify
from ptblm.device import set_precision
from ptblm.errors import TrainingError
from ptblm.model import PTBModel
from ptblm.reference import reference_step
from ptblm.step import TrainStep
from workload import Workload, synchronize, windows

PLAIN = "plain fp32"
EXACT = "plain fp64"  # the trajectory reference: the plain loop without float32 rounding
EAGER = "eager"  # suffix of ours without CUDA graphs, e.g. "ours tf32 eager"


class Trainer:
    """Runs `steps` training steps of one candidate and says how long they took."""

    def __init__(self, name: str, config: ModelConfig, work: Workload, seed: int):
        self.name = name
        self.config = config
        self.device = work.device
        torch.manual_seed(seed)
        ours = PTBModel(config).to(work.device)
        self.model = PlainModel(ours) if self.is_plain else ours
        self.data = batchify(work.train_ids, config.batch_size).to(work.device)
        self.batches = windows(self.data, config.num_steps)
        self.state = ours.zero_state(config.batch_size, work.device)
        if name == EXACT:
            self.model.double()
            self.state = tuple(s.double() for s in self.state)
        self.costs: list[float] = []  # per-step costs, read back after timing
        self.model.train()
        if self.is_plain:
            self.optimizer = torch.optim.SGD(self.model.parameters(), lr=config.learning_rate)
        else:
            self.step = TrainStep(ours, self.precision, cuda_graph=not name.endswith(EAGER))

    @property
    def is_plain(self) -> bool:
        return self.name.startswith("plain")

    @property
    def precision(self) -> str:
        return self.name.split()[1]

    def run(self, steps: int) -> float:
        """Seconds for `steps` steps, synchronized at both ends."""
        set_precision(self.precision, self.device)  # process-wide: set for each run
        synchronize(self.device)
        start = time.perf_counter()
        step = self.plain_step if self.is_plain else self.fast_step
        costs = [step(*next(self.batches)) for _ in range(steps)]
        synchronize(self.device)
        seconds = time.perf_counter() - start
        self.costs += [float(c) for c in costs]
        return seconds

    def fast_step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.step(x, y)

    def plain_step(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """The reference step, and .item() every step, as the loop most people write."""
        cost, self.state = reference_step(
            self.model, self.optimizer, x, y, self.state, self.config.max_grad_norm
        )
        return cost.item()


def supported(precisions: list[str], device: torch.device) -> list[str]:
    """The precisions this device runs; each one left out is said why."""
    kept = []
    for precision in precisions:
        try:
            set_precision(precision, device)
        except TrainingError as exc:
            click.echo(f"skipping {precision}: {exc}")
        else:
            kept.append(precision)
    return kept


def candidate_names(precisions: list[str], with_eager: bool) -> list[str]:
    """The plain loop in fp32 (and tf32 when ours runs tf32), then ours in each precision,
    then (CUDA) ours without CUDA graphs."""
    plain = [PLAIN] + (["plain tf32"] if "tf32" in precisions else [])
    ours = [f"ours {p}" for p in precisions]
    return plain + ours + ([f"{name} {EAGER}" for name in ours] if with_eager else [])


def baseline(name: str, names: list[str]) -> str:
    """The plain loop a candidate's speed-up is against: same precision where there is one."""
    same = f"plain {name.split()[1]}"
    return same if same in names else PLAIN


def ours(names: list[str]) -> list[str]:
    """The candidates that run ptblm's own step: the only ones a variant config has."""
    return [name for name in names if not name.startswith("plain")]
