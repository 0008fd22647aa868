"""Peak memory of a candidate's training: CUDA's allocator peak, or a fresh process's RSS."""

from __future__ import annotations

import gc
import multiprocessing
from pathlib import Path

import torch

from candidates import Trainer
from ptblm.config import ModelConfig
from ptblm.device import keep_freed_memory
from ptblm.step import TrainStep
from workload import Workload, load_workload


def _peak_memory_child(config: ModelConfig, name: str, device: str, seed: int, queue) -> None:
    keep_freed_memory()
    work = load_workload(torch.device(device), config.vocab_size, seed)
    Trainer(name, config, work, seed).run(TrainStep.EAGER_STEPS + 2)
    # VmHWM, not ru_maxrss: the latter starts at the parent's RSS (kept across fork + exec)
    status = Path("/proc/self/status").read_text().splitlines()
    queue.put(next(int(line.split()[1]) for line in status if line.startswith("VmHWM")) / 1024)


def measure_peak_memory(config: ModelConfig, work: Workload, name: str, seed: int) -> dict:
    """CUDA: max allocated over a few steps (graph capture included), above what the process
    held before. CPU: the peak RSS of a fresh process doing the same (RSS peaks cannot be
    told apart inside one process)."""
    if work.device.type == "cuda":
        gc.collect()  # earlier candidates' models and graphs
        torch.cuda.empty_cache()
        before = torch.cuda.memory_allocated(work.device)
        torch.cuda.reset_peak_memory_stats(work.device)
        Trainer(name, config, work, seed).run(TrainStep.EAGER_STEPS + 2)
        peak = torch.cuda.max_memory_allocated(work.device) - before
        return {
            "peak_memory_mib": round(peak / 2**20, 1),
            "peak_memory_kind": "CUDA max allocated, above the process's allocations before",
        }
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    args = (config, name, str(work.device), seed, queue)
    child = context.Process(target=_peak_memory_child, args=args)
    child.start()
    peak = queue.get()
    child.join()
    return {"peak_memory_mib": round(peak, 1), "peak_memory_kind": "process peak RSS"}
