"""One run over several processes (torchrun): ranks, the batch split, DDP, sums over ranks.

Rank r of N owns rows r*B/N ... (r+1)*B/N - 1 of every [batch, time] window (the tutorial's
batch columns) and carries their state. Each rank's cost is the mean over its B/N rows;
DistributedDataParallel averages the gradients, so the update is the one a single process
with batch B makes (the global-norm clip then sees the same gradient). nccl on CUDA, gloo
on CPU. Imports torch only.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from .model import PTBModel, State

# Rank 0 scores the validation split and writes the checkpoint while the others wait at the
# next collective; gloo's default 30-minute timeout is kept generous for slow CPUs.
COLLECTIVE_TIMEOUT = timedelta(hours=2)


@dataclass(frozen=True)
class World:
    """This process's place in the run: rank, size, and its rank on its own machine."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


SINGLE = World()  # one process: what every function here treats as a no-op


def world_from_env() -> World:
    """The variables torchrun sets for each worker (absent: a single process)."""
    return World(
        rank=int(os.environ.get("RANK", 0)),
        size=int(os.environ.get("WORLD_SIZE", 1)),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
    )


def start(world: World, device: torch.device) -> None:
    """Join the process group (torchrun's rendezvous, from the environment)."""
    if world.distributed and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(
            backend,
            store=_attempt_store(world),
            rank=world.rank,
            world_size=world.size,
            timeout=COLLECTIVE_TIMEOUT,
            device_id=device if device.type == "cuda" else None,
        )


def _attempt_store(world: World) -> dist.Store | None:
    """torchrun's store, with keys of this attempt only: after a restart the agent's store
    still holds the killed workers' addresses under the same keys, and a rank that read one
    first failed to connect ("Connection refused"; pytorch/pytorch#167288). None: env://."""
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    store = dist.TCPStore(
        os.environ["MASTER_ADDR"],
        int(os.environ["MASTER_PORT"]),
        world.size,
        is_master=False,
        timeout=COLLECTIVE_TIMEOUT,
    )
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    return dist.PrefixStore(f"ptblm/attempt-{attempt}/", store)


def stop() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def rank_rows(data: torch.Tensor, world: World) -> torch.Tensor:
    """This rank's rows of a [batch, len] split (all of them in a single process)."""
    rows = data.size(0) // world.size
    return data[world.rank * rows : (world.rank + 1) * rows]


class Cost(nn.Module):
    """`model.cost` as a module's forward, so DistributedDataParallel can wrap it."""

    def __init__(self, model: PTBModel):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, y: torch.Tensor, state: State):
        return self.model.cost(x, y, state)


def data_parallel(model: PTBModel, world: World, device: torch.device) -> nn.Module:
    """The cost under DDP, whose backward averages the gradients over ranks."""
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(Cost(model), device_ids=ids)


def share_weights(model: nn.Module, world: World) -> None:
    """Rank 0's weights on every rank (after rank 0 alone resumed from the checkpoint)."""
    if world.distributed:
        with torch.no_grad():
            for tensor in model.state_dict().values():
                dist.broadcast(tensor, src=0)


def broadcast(obj, world: World):
    """Rank 0's `obj` on every rank (pickled: small things only, like the epoch history)."""
    if not world.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def mean_log_perplexity(perplexity: float, world: World) -> float:
    """The perplexity over every rank's rows, from each rank's: every rank scores the same
    number of windows, so the log-perplexities average (the cost is a mean over rows)."""
    if not world.distributed:
        return perplexity
    return math.exp(_all_reduce(math.log(perplexity), dist.ReduceOp.SUM) / world.size)


def summed(value: float, world: World) -> float:
    """A sum over ranks (the words trained)."""
    return _all_reduce(value, dist.ReduceOp.SUM) if world.distributed else value


def slowest(value: float, world: World) -> float:
    """The largest over ranks (an epoch's seconds: the group waits for its slowest rank)."""
    return _all_reduce(value, dist.ReduceOp.MAX) if world.distributed else value


def _all_reduce(value: float, op) -> float:
    on = "cuda" if dist.get_backend() == "nccl" else "cpu"  # nccl reduces CUDA tensors only
    tensor = torch.tensor([value], dtype=torch.float64, device=on)
    dist.all_reduce(tensor, op=op)
    return tensor.item()


def epoch_seed(seed: int, epoch: int, world: World) -> int:
    """Each rank's RNG seed for an epoch (dropout masks): distinct per rank, and a function of
    the epoch alone, so a group restarted from a checkpoint draws what it would have."""
    return seed * 1_000_003 + epoch * 1_009 + world.rank
