"""Speed measurements: training words/s over interleaved rounds, evaluation words/s at
batch size 1, and the scaling study (time per epoch against hidden and batch size)."""

from __future__ import annotations

import statistics
import time
from dataclasses import replace

import click

from candidates import Trainer
from plain import plain_evaluate
from ptblm.config import ModelConfig
from ptblm.data import epoch_size
from ptblm.device import set_precision
from ptblm.epoch import evaluate_split
from ptblm.model import PTBModel
from workload import TRAIN_TOKENS, Workload, synchronize

Job = tuple[str, ModelConfig, str]  # (config name, config, candidate)


def measure_training(
    jobs: list[Job], work: Workload, warmup: int, steps: int, rounds: int, seed: int
) -> dict[tuple[str, str], dict]:
    """Median words/s over interleaved rounds, each (config, candidate) on its own model and
    data; keyed by (config name, candidate)."""
    trainers = {
        (name, candidate): Trainer(candidate, config, work, seed)
        for name, config, candidate in jobs
    }
    for trainer in trainers.values():
        trainer.run(warmup)
    seconds: dict[tuple[str, str], list[float]] = {key: [] for key in trainers}
    for _ in range(rounds):
        for key, trainer in trainers.items():
            seconds[key].append(trainer.run(steps))
    results = {}
    for key, trainer in trainers.items():
        config = trainer.config
        words = steps * config.batch_size * config.num_steps
        epoch_words = epoch_size(TRAIN_TOKENS, config.batch_size, config.num_steps) * (
            config.batch_size * config.num_steps
        )
        rates = [words / s for s in seconds[key]]
        rate = statistics.median(rates)
        results[key] = {
            "train_words_per_sec": round(rate, 1),
            "train_words_per_sec_rounds": [round(r, 1) for r in rates],
            "epoch_time_s_derived": round(epoch_words / rate, 2),
            "final_cost": trainer.costs[-1],
        }
    return results


def measure_evaluation(
    config: ModelConfig, work: Workload, names: list[str], ours_words: int, plain_words: int
) -> dict[str, float]:
    """Words/s scoring test tokens at batch size 1 (ours: `evaluate_split`, as `evaluate` runs).

    Evaluation uses no CUDA graph, so an eager variant shares its precision's figure."""
    model = PTBModel(config).to(work.device)
    rates: dict[str, float] = {}
    for name in names:
        kind, precision = name.split()[:2]
        same = f"{kind} {precision}"
        if same in rates:
            rates[name] = rates[same]
            continue
        set_precision(precision, work.device)
        if kind == "plain":
            plain_evaluate(model, work.eval_ids[:20], work.device)  # warm-up
            synchronize(work.device)
            start = time.perf_counter()
            plain_evaluate(model, work.eval_ids[: plain_words + 1], work.device)
            synchronize(work.device)
            rates[name] = round(plain_words / (time.perf_counter() - start), 1)
        else:
            evaluate_split(model, work.eval_ids[:2002], 1, work.device, precision)  # warm-up
            ids = work.eval_ids[: ours_words + 1]
            result = evaluate_split(model, ids, 1, work.device, precision)
            rates[name] = round(result.words_per_sec, 1)
        rates[same] = rates[name]
    return {name: rates[name] for name in names}


def measure_scaling(
    base: ModelConfig,
    work: Workload,
    steps: int,
    hidden_sizes: list[int],
    batches: list[int],
    seed: int,
    precision: str,
) -> list[dict]:
    """Time per (derived) epoch of ours, in `precision`, as hidden size and batch size grow."""
    rows = []
    cases = [("hidden_size", h) for h in hidden_sizes] + [("batch_size", b) for b in batches]
    name = f"ours {precision}"
    for key, value in cases:
        config = replace(base, **{key: value})
        result = measure_training([(key, config, name)], work, 5, steps, 1, seed)[key, name]
        rows.append(
            {
                "vary": key,
                "hidden_size": config.hidden_size,
                "batch_size": config.batch_size,
                **result,
            }
        )
        click.echo(
            f"  scaling {key}={value}: {result['train_words_per_sec']:,.0f} words/s, "
            f"epoch {result['epoch_time_s_derived']:.1f} s"
        )
    return rows
