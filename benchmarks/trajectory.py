"""The trajectory check: does ours train the same steps as the plain loop, to rounding?"""

from __future__ import annotations

import math
import statistics
from dataclasses import replace

import torch

from candidates import EXACT, PLAIN, Trainer
from ptblm.config import ModelConfig
from workload import Workload

MIN_DIFF = 1e-12  # per-step distances below this count as this in the geometric mean


def check_trajectory(
    config: ModelConfig, work: Workload, precisions: list[str], steps: int, seed: int
) -> dict:
    """Every candidate from one seed on the same batches, against the plain loop in float64.

    The early steps (lr 1, clipped) amplify any float32 rounding difference ~1e4-fold
    within 20 steps, so two float32 loops that sum in different orders drift apart by
    ~1e-3 even when both are right. The fair test is distance from the exact (float64)
    trajectory: ours fp32 passes if it stays as close to it as the plain fp32 loop does
    (within 2x), step by step. The verdict takes the geometric mean of the per-step
    distances, not their maximum: `large` turns chaotic within a few steps (its cost
    jumps ~4x at step 3 and amplifies rounding ~1e4-fold in that one step), so the last
    steps' distances are mostly chance, while the mean weighs every step alike.
    tf32's and bf16's distances are reported, not judged. Dropout is off:
    cuDNN draws its masks from a stream of its own, and a CUDA graph draws other masks
    than eager steps, so only dropout-free runs can follow one trajectory.
    """
    config = replace(config, keep_prob=1.0)
    names = [EXACT, PLAIN] + [f"ours {p}" for p in precisions]
    costs = {}
    for name in names:
        trainer = Trainer(name, config, work, seed)
        torch.manual_seed(seed)  # the same dropout masks in all
        trainer.run(steps)
        costs[name] = trainer.costs
    exact = costs[EXACT]
    check: dict = {"steps": steps, "perplexity_exact": _perplexity(exact, config)}
    for name in names[1:]:
        rel = [abs(a - b) / abs(b) for a, b in zip(costs[name], exact, strict=True)]
        check[name] = {
            "max_rel_cost_diff": max(rel),
            "geomean_rel_cost_diff": statistics.geometric_mean(max(r, MIN_DIFF) for r in rel),
            "rel_cost_diff_per_step": rel,
            "perplexity": _perplexity(costs[name], config),
        }
    if "ours fp32" in check:
        plain = check[PLAIN]["geomean_rel_cost_diff"]
        check["ok"] = check["ours fp32"]["geomean_rel_cost_diff"] <= 2 * plain
    return check


def _perplexity(costs: list[float], config: ModelConfig) -> float:
    return math.exp(sum(costs) / (len(costs) * config.num_steps))
