"""What one run over several processes (torchrun, DistributedDataParallel) costs and buys.

For each process count N it starts torchrun with N workers, which train the config's real
step (`TrainStep` under DDP, the batch's rows split N ways) and time it, then time an
all-reduce of a gradient-sized buffer alone: the part of a step DDP adds. The machine's
cores are shared out (N processes x cores/N threads), so the rows compare like with like.
Rounds alternate between the counts and each reports its median.

    python benchmarks/ddp.py                                  # CPU (gloo): small, 1 vs 2
    python benchmarks/ddp.py --batch-size 80                  # a larger batch: does it pay?
    python benchmarks/ddp.py --device cuda --config large --processes 1   # 1-GPU baseline
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import click
import torch

from ptblm.config import load_params, require_batch_splits
from ptblm.data import batchify
from ptblm.device import training_device
from ptblm.distributed import data_parallel, rank_rows, slowest, start, stop, world_from_env
from ptblm.launch import threads_per_process, torchrun_command
from ptblm.model import PTBModel
from ptblm.step import TrainStep
from report import environment
from workload import ROOT, load_workload, synchronize, windows


def worker(config_name: str, batch_size: int, device_name: str, steps: int, out: Path) -> None:
    """One torchrun worker: time `steps` training steps, then `steps` gradient all-reduces."""
    import torch.distributed as dist

    world = world_from_env()
    config = load_params(ROOT / "params.yaml", config_name).config
    config = replace(config, batch_size=batch_size or config.batch_size)
    require_batch_splits(config_name, config.batch_size, world.size)
    device = training_device(device_name, 0, world.local_rank if world.distributed else None)
    start(world, device)
    torch.manual_seed(0)
    model = PTBModel(config).to(device)
    parallel = data_parallel(model, world, device) if world.distributed else None
    step = TrainStep(model, "fp32", True, parallel, config.batch_size // world.size)
    work = load_workload(device, config.vocab_size, 0)
    data = rank_rows(batchify(work.train_ids, config.batch_size), world).to(device)
    batches = windows(data, config.num_steps)

    def timed(action) -> float:
        for _ in range(5):  # warm-up (and, on CUDA, the graph's capture)
            action()
        synchronize(device)
        if world.distributed:
            dist.barrier()
        began = time.perf_counter()
        for _ in range(steps):
            action()
        synchronize(device)
        return slowest(time.perf_counter() - began, world) / steps

    step_s = timed(lambda: step(*next(batches)))
    grads = torch.zeros(sum(p.numel() for p in model.parameters()), device=device)
    reduce_s = timed(lambda: dist.all_reduce(grads)) if world.distributed else 0.0
    if world.is_main:
        out.write_text(
            json.dumps(
                {
                    "processes": world.size,
                    "threads_per_process": torch.get_num_threads(),
                    "batch_size": config.batch_size,
                    "parameters": grads.numel(),
                    "ms_per_step": step_s * 1e3,
                    "allreduce_ms": reduce_s * 1e3,
                    "words_per_sec": config.batch_size * config.num_steps / step_s,
                }
            )
        )
    stop()


def measure(nproc: int, args: list[str], device: str) -> dict:
    """One round at `nproc` processes: torchrun, the cores shared out, rank 0's figures."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        cmd = torchrun_command(nproc, 0, [__file__, "--worker", str(out), *args])
        env = dict(os.environ)
        if device == "cpu":
            env["OMP_NUM_THREADS"] = str(threads_per_process(nproc))
        subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
        return json.loads(out.read_text())


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_name", default="small", show_default=True)
@click.option("--processes", default="1,2", show_default=True, help="Process counts to compare.")
@click.option("--batch-size", type=int, default=0, help="Global batch (0: the config's).")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--steps", type=int, default=100, show_default=True, help="Timed steps a round.")
@click.option("--rounds", type=int, default=3, show_default=True)
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Folder for results.")
@click.option("--worker", "worker_out", type=click.Path(path_type=Path), hidden=True)
def main(config_name, processes, batch_size, device, steps, rounds, out, worker_out) -> None:
    """Train steps per second at 1, 2, ... processes (DDP), and the all-reduce each adds."""
    if worker_out is not None:
        worker(config_name, batch_size, device, steps, worker_out)
        return
    counts = [int(n) for n in processes.split(",")]
    args = ["--config", config_name, "--batch-size", str(batch_size)]
    args += ["--device", device, "--steps", str(steps)]
    runs: dict[int, list[dict]] = {n: [] for n in counts}
    for r in range(rounds):
        for n in counts:
            runs[n].append(measure(n, args, device))
            ms = runs[n][-1]["ms_per_step"]
            click.echo(f"round {r + 1}/{rounds}, {n} process(es): {ms:.1f} ms/step", err=True)
    rows = []
    for n in counts:
        median = {k: statistics.median(run[k] for run in runs[n]) for k in runs[n][0]}
        rows.append(median)
    base = rows[0]["words_per_sec"]
    lines = [
        f"{config_name}, global batch {rows[0]['batch_size']:.0f}, {device}, "
        f"{rows[0]['parameters']:,.0f} parameters; median of {rounds} rounds of {steps} steps",
        "",
        "| processes x threads | ms/step | words/s | vs first row | all-reduce ms/step |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['processes']:.0f} x {row['threads_per_process']:.0f} | "
            f"{row['ms_per_step']:.1f} | {row['words_per_sec']:,.0f} | "
            f"{row['words_per_sec'] / base:.2f}x | {row['allreduce_ms']:.2f} |"
        )
    table = "\n".join(lines)
    click.echo(table)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        record = {
            "command": " ".join(["python", "benchmarks/ddp.py", *sys.argv[1:]]),
            "environment": environment(torch.device(device)),
            "rows": rows,
            "rounds": {str(n): runs[n] for n in counts},
        }
        (out / "ddp.json").write_text(json.dumps(record, indent=2) + "\n")
        (out / "ddp.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
