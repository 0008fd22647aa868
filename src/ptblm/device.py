"""Where and how training computes: the device, the precision (TF32, bf16 autocast), memory.

Process-wide settings that training, evaluation and the benchmark share; imports torch only.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools

import torch

from .errors import TrainingError

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise TrainingError(
            "params: train.device = 'cuda' but no CUDA device is visible; set it to auto or cpu"
        )
    return torch.device(name)


def require_gpus(device: torch.device, processes: int) -> None:
    """A run over `processes` processes on CUDA needs a GPU for each (train.nproc_per_node)."""
    if device.type == "cuda" and processes > torch.cuda.device_count():
        raise TrainingError(
            f"params: train.nproc_per_node = {processes} but {torch.cuda.device_count()} GPUs "
            "are visible; lower it, or set train.device to cpu for gloo processes"
        )


def gpus_for_ranks(name: str, processes: int, gpu_wait_s: float) -> str | None:
    """For a launcher of `processes` CUDA ranks: lock that many free GPUs and return them as
    CUDA_VISIBLE_DEVICES for the ranks (None on CPU)."""
    if resolve_device(name).type != "cuda":
        return None
    from .gpu_lock import claim_gpus, gpu_names

    count = torch.cuda.device_count()
    require_gpus(torch.device("cuda"), processes)
    names = gpu_names(count)
    return ",".join(names[i] for i in claim_gpus(count, processes, gpu_wait_s))


def training_device(name: str, gpu_wait_s: float, local_rank: int | None = None) -> torch.device:
    """The device a train or evaluate process computes on. On CUDA a GPU no other ptblm
    process holds (`gpu_lock`), so a queue started with -j N runs on N GPUs at once; under
    the train stage's torchrun, its local rank's GPU among those the launcher locked."""
    device = resolve_device(name)
    if device.type != "cuda":
        return device
    from .gpu_lock import gpu_for_process

    index = gpu_for_process(torch.cuda.device_count(), local_rank, gpu_wait_s)
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def use_threads(count: int) -> None:
    """train.num_threads: 0 keeps torch's default (one per core). Set before anything
    describes the device, so run tags and speed files name the threads that trained."""
    if count:
        torch.set_num_threads(count)


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    threads = torch.get_num_threads()
    return f"cpu ({threads} thread{'s' if threads != 1 else ''})"


def keep_freed_memory() -> None:
    """Keep the large per-step buffers (the [tokens, vocab] logits) inside the process.

    glibc otherwise hands them back to the OS (mmap, heap trimming) and every CPU step
    page-faults them in again: on the small config ~1,300-3,300 page faults and 3-5 ms of
    system time per step, against ~0.1 ms with these settings. No-op off glibc.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    libc.mallopt(M_MMAP_THRESHOLD, 32 << 20)  # above every config's logits (at most 28 MB)
    libc.mallopt(M_TRIM_THRESHOLD, 1 << 30)


def set_precision(precision: str, device: torch.device) -> None:
    """fp32 means IEEE float32 everywhere, cuDNN included (PyTorch lets cuDNN use TF32 by
    default); tf32 lets CUDA matmuls and cuDNN multiply in TF32 on tensor cores (10-bit
    mantissa, float32 sums); bf16 autocasts (see `autocast`). On CPU tf32 is fp32."""
    if precision == "bf16" and device.type == "cpu" and not cpu_runs_bf16_lstm():
        raise TrainingError(
            "params: train.precision = 'bf16' needs a CPU whose oneDNN runs bfloat16 LSTMs "
            "(AVX-512); this CPU has none: use fp32"
        )
    tf32 = precision == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32


@functools.cache
def cpu_runs_bf16_lstm() -> bool:
    """Whether oneDNN has a bfloat16 LSTM for this CPU (it has none without AVX-512)."""
    with torch.random.fork_rng(devices=[]):  # the probe's init must not move the seeded RNG
        lstm = torch.nn.LSTM(4, 4)
    try:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            lstm(torch.zeros(2, 1, 4))
    except RuntimeError:
        return False
    return True


def autocast(device: torch.device, precision: str):
    if precision == "bf16":  # no weight-cast cache: each weight is cast once a step anyway,
        # and a cached cast would outlive a CUDA graph's capture
        return torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=False)
    return contextlib.nullcontext()
