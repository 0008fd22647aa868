"""The training step: one truncated-BPTT update, its gradient clipped by global norm.

Read `reference.reference_step` first: the same update in plain PyTorch (loss, clip, step),
the definition this one must equal. `TrainStep` is the step as the loop and the benchmark
call it; on CUDA it replays the step as a CUDA graph.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from torch import nn

from .device import autocast
from .model import PTBModel, State, detach


def set_clip_scale(
    optimizer: torch.optim.SGD, params: list[torch.nn.Parameter], max_norm: float
) -> torch.Tensor:
    """Set the next fused step's clip: g * max_norm / max(norm, max_norm), TF's clip_by_global_norm.

    Clips nothing itself: the divisor goes in as the optimizer's `grad_scale` (the hook AMP's
    GradScaler uses), so clipping costs no pass of its own over the gradients and no host
    sync. Returns the global norm before clipping.
    """
    grads = [p.grad for p in params if p.grad is not None]
    norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
    optimizer.grad_scale = torch.clamp(norm, min=max_norm) / max_norm
    return norm


def train_step(
    cost_of: Callable[[torch.Tensor, torch.Tensor, State], tuple[torch.Tensor, State]],
    x: torch.Tensor,
    y: torch.Tensor,
    state: State,
    optimizer: torch.optim.SGD,
    params: list[torch.nn.Parameter],
    max_grad_norm: float,
    precision: str = "fp32",
) -> tuple[torch.Tensor, State]:
    """One truncated-BPTT update; returns the (detached) cost and the detached next state.

    `cost_of` is `model.cost`, or the model under DistributedDataParallel, whose backward
    averages the gradients over ranks. Nothing here reads a value back to the host, so a
    CUDA graph can capture it whole.
    """
    with autocast(x.device, precision):
        cost, state = cost_of(x, y, state)
    optimizer.zero_grad(set_to_none=True)
    cost.backward()
    set_clip_scale(optimizer, params, max_grad_norm)
    optimizer.step()
    return cost.detach(), detach(state)


class TrainStep:
    """The training step as the loop (and the benchmark) calls it, state carried inside.

    On CUDA a step is a few hundred small kernels; launched one by one from Python the
    GPU mostly waits for the CPU. So after `EAGER_STEPS` eager steps (which let cuDNN and
    cuBLAS set up, as capture requires) the step is captured once into a CUDA graph and
    replayed: one launch a step. Every step, eager or replayed, is a real training step.
    The graph reads its inputs, the learning rate and the carried state from fixed
    buffers, so those are updated in place. Dropout stays random: replays advance the
    CUDA generator like eager steps do (other masks than eager, the same distribution).
    """

    EAGER_STEPS = 3

    def __init__(
        self,
        model: PTBModel,
        precision: str = "fp32",
        cuda_graph: bool = True,
        data_parallel: nn.Module | None = None,
        rows: int | None = None,
    ) -> None:
        """`data_parallel`: the model's cost under DDP (then steps run eagerly); `rows`: the
        batch rows this process carries (config.batch_size unless the batch is split)."""
        config = model.config
        device = model.softmax.weight.device
        self.model = model
        self.cost_of = data_parallel or model.cost
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.max_grad_norm = config.max_grad_norm
        self.precision = precision
        self.graphed = cuda_graph and device.type == "cuda" and data_parallel is None
        # a tensor lr lives on the device, so a captured step sees set_lr's changes
        self._lr = torch.tensor(config.learning_rate, device=device) if self.graphed else None
        # plain SGD, fused: one kernel updates every parameter, clipping folded in
        self.optimizer = torch.optim.SGD(
            self.params, lr=self._lr if self.graphed else config.learning_rate, fused=True
        )
        self.state: State = model.zero_state(rows or config.batch_size, device)
        self._eager_steps = 0
        self._graph: torch.cuda.CUDAGraph | None = None

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:  # after optimizer.load_state_dict too,
            group["lr"] = lr if self._lr is None else self._lr  # which puts the saved value
        if self._lr is not None:
            self._lr.fill_(lr)

    def reset_state(self) -> None:
        """Zero state, as at the start of every epoch (in place: the graph reads it)."""
        for tensor in self.state:
            tensor.zero_()

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Train on one (x, y) window; returns its cost (a device tensor, not read back)."""
        if self._graph is not None:
            self._x.copy_(x)
            self._y.copy_(y)
            self._graph.replay()
            return self._cost.clone()  # the next replay overwrites _cost
        if self.graphed and self._eager_steps >= self.EAGER_STEPS:
            return self._capture(x, y)
        self._eager_steps += 1
        with self._side_stream():
            return self._step(x, y)

    def _step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """train_step, with the next state copied into the carried-state buffers."""
        cost, state = train_step(
            self.cost_of,
            x,
            y,
            self.state,
            self.optimizer,
            self.params,
            self.max_grad_norm,
            self.precision,
        )
        for tensor, new in zip(self.state, state, strict=True):
            tensor.copy_(new)
        return cost

    @contextlib.contextmanager
    def _side_stream(self):
        """CUDA graphs want the eager steps before capture on a side stream."""
        if not self.graphed:
            yield
            return
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            yield
        torch.cuda.current_stream().wait_stream(stream)

    def _capture(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self._x, self._y = x.clone(), y.clone()
        self.optimizer.zero_grad(set_to_none=True)  # gradients come from the graph's pool
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            self._cost = self._step(self._x, self._y)
        self._graph = graph
        graph.replay()  # capture only records: this runs the step
        return self._cost.clone()
