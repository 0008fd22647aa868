"""Training and evaluation speed of ptblm, measured side by side with a plain PyTorch loop.

Every ratio comes from one process: the candidates (the plain loop, ours in each
precision, on CUDA also ours without CUDA graphs) run interleaved, round after
round, and each reports the median of its rounds, so a noisy or shared machine
slows them alike. "Ours" calls the library's own `TrainStep` and `evaluate_split`,
so it measures what users run. The variants (GRU, tied weights, variational dropout)
are timed in the same rounds as the 2014 model of their size, against it.

    python benchmarks/bench.py                      # CPU: small config, fp32 + bf16
    python benchmarks/bench.py --device cuda --configs small,medium,large --precisions fp32,tf32
    python benchmarks/bench.py --configs small,small-tied,small-gru --precisions fp32
"""

from __future__ import annotations

import datetime as dt
import gc
import json
import math
import multiprocessing
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields, replace
from pathlib import Path

import click
import torch
import torch.nn.functional as F
from torch import nn

from ptblm.config import PRECISIONS, ModelConfig, load_params
from ptblm.data import batchify, epoch_size, load_corpus
from ptblm.device import keep_freed_memory, resolve_device, set_precision
from ptblm.epoch import evaluate_split
from ptblm.errors import TrainingError
from ptblm.model import PTBModel, detach
from ptblm.step import TrainStep

ROOT = Path(__file__).resolve().parents[1]
PREPARED = ROOT / "data" / "prepared"
TRAIN_TOKENS = 929_589  # reference.md: the train split, so epoch times are for the real epoch
PLAIN = "plain fp32"
EXACT = "plain fp64"  # the trajectory reference: the plain loop without float32 rounding
EAGER = "eager"  # suffix of ours without CUDA graphs, e.g. "ours tf32 eager"
MIN_DIFF = 1e-12  # per-step distances below this count as this in the geometric mean
# What makes a config a variant of the 2014 model, in how it computes (lr_schedule only
# changes the learning rates, not the step).
VARIANT_KEYS = ("cell", "tie_weights", "dropout")


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


# --- the two training loops ---------------------------------------------------------------


class PlainModel(nn.Module):
    """The model as most people write it (pytorch/examples style): the same function as
    ours, with nn.Linear's [vocab, hidden] softmax weight and autograd's cross entropy."""

    def __init__(self, ours: PTBModel):
        super().__init__()
        config = ours.config
        self.embedding = nn.Embedding(config.vocab_size, config.hidden_size)
        self.dropout = nn.Dropout(1.0 - config.keep_prob)
        self.lstm = nn.LSTM(
            config.hidden_size,
            config.hidden_size,
            config.num_layers,
            dropout=ours.lstm.dropout,
            batch_first=True,
        )
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size)
        with torch.no_grad():  # ours' initial weights, so both start at the same point
            self.embedding.weight.copy_(ours.embedding.weight)
            self.lstm.load_state_dict(ours.lstm.state_dict())
            self.decoder.weight.copy_(ours.softmax.weight.t())
            self.decoder.bias.copy_(ours.softmax.bias)
        self.to(ours.embedding.weight.device)

    def forward(self, x: torch.Tensor, state):
        hidden, state = self.lstm(self.dropout(self.embedding(x)), state)
        return self.decoder(self.dropout(hidden)), state

    def copy_into(self, ours: PTBModel) -> PTBModel:
        """These weights in ours' layout, so ptblm's own evaluation can score them."""
        with torch.no_grad():
            ours.embedding.weight.copy_(self.embedding.weight)
            ours.lstm.load_state_dict(self.lstm.state_dict())
            ours.softmax.weight.copy_(self.decoder.weight.t())
            ours.softmax.bias.copy_(self.decoder.bias)
        return ours


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
        cost, self.state = plain_train_step(
            self.model, self.optimizer, x, y, self.state, self.config.max_grad_norm
        )
        return cost


def plain_train_step(
    model: PlainModel,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    state,
    max_grad_norm: float,
) -> tuple[float, tuple]:
    """The loop most people write: logits, mean CE * num_steps, clip_grad_norm_, .item()."""
    logits, state = model(x, state)
    loss = F.cross_entropy(logits.flatten(0, 1), y.flatten()) * x.size(1)
    optimizer.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    return loss.item(), detach(state)


def plain_evaluate(ours: PTBModel, ids: torch.Tensor, device: torch.device) -> float:
    """The tutorial's test loop as usually written: batch 1, num_steps 1, .item() per word."""
    model = PlainModel(ours).eval()
    data = ids.to(device)[None]
    state = ours.zero_state(1, device)
    total = 0.0
    with torch.no_grad():
        for i in range(data.size(1) - 1):
            logits, state = model(data[:, i : i + 1], state)
            total += F.cross_entropy(logits[0], data[0, i + 1 : i + 2]).item()
    return math.exp(total / (data.size(1) - 1))


# --- measurements -----------------------------------------------------------------------


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


# --- output -------------------------------------------------------------------------------


def git_commit() -> str:
    """$PTBLM_COMMIT if set (a GPU machine gets a copy of the tree whose .git, if any, may be
    stale), else this checkout's commit (+ -dirty)."""
    if os.environ.get("PTBLM_COMMIT"):
        return os.environ["PTBLM_COMMIT"]
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        commit, dirty = "", ""
    return commit + ("-dirty" if dirty else "") if commit else "unknown"


def environment(device: torch.device) -> dict:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    return {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "device": device.type,
        "device_name": name or platform.machine(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        # TF32 (matmul and cuDNN) is set per candidate: on for "tf32", off for every other
        "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None,
        "cpu_count": multiprocessing.cpu_count(),
        "commit": git_commit(),
        "command": shlex.join(["python", *sys.argv]),
    }


def markdown(report: dict) -> str:
    env = report["environment"]
    lines = [
        f"# ptblm benchmark: {env['device_name']} ({env['device']})",
        "",
        f"{env['date']}, torch {env['torch']}, {env['threads']} threads, commit {env['commit']}, "
        f"data: {report['data']}. Note: {report['note'] or '-'}",
        "",
        f"Command: `{env['command']}`",
        "",
        "Training words/s is the median of interleaved rounds (synchronized); epoch time is "
        "derived (epoch words / words/s). × plain: against the plain loop in the same precision "
        "where it ran, else plain fp32; a variant (GRU, tied, variational): against the 2014 "
        "model of its size, the same candidate, in the same rounds. 'eager': ours without CUDA "
        "graphs. Eval: test tokens at batch size 1 (no CUDA graphs there).",
        "",
        "| config | candidate | train words/s | × (against) | epoch (s, derived) | eval words/s "
        "| peak memory (MiB) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for row in report["results"]:
        if "baseline_config" in row:
            versus = f"{row['speedup_vs_baseline_config']:.2f} ({row['baseline_config']})"
        else:
            versus = f"{row['speedup_vs_plain']:.2f} ({row.get('baseline', PLAIN)})"
        lines.append(
            f"| {row['config']} | {row['candidate']} | {row['train_words_per_sec']:,.0f} | "
            f"{versus} | {row['epoch_time_s_derived']:.1f} | "
            f"{row['eval_words_per_sec']:,.0f} | {row.get('peak_memory_mib', float('nan')):.0f} |"
        )
    for config, check in report["trajectory"].items():
        lines += [
            "",
            f"Trajectory check ({config}, {check['steps']} training steps from one seed on the "
            f"same batches, dropout off) against the plain loop in float64, perplexity "
            f"{check['perplexity_exact']:.4f}:",
        ]
        for name, value in check.items():
            if isinstance(value, dict):
                per_step = " ".join(f"{r:.1e}" for r in value["rel_cost_diff_per_step"])
                lines.append(
                    f"- {name}: perplexity {value['perplexity']:.4f}, relative per-step cost "
                    f"difference: geometric mean {value['geomean_rel_cost_diff']:.2e}, max "
                    f"{value['max_rel_cost_diff']:.2e}; per step: {per_step}"
                )
        if "ok" in check:
            verdict = "OK" if check["ok"] else "NO"
            lines.append(
                "- ours fp32 as close to exact as plain fp32 (geometric means within 2x): "
                f"{verdict}"
            )
    if report["scaling"]:
        lines += [
            "",
            f"## Scaling (ours, {report.get('scaling_precision', 'fp32')}; others as the small "
            "config)",
            "",
            "| hidden | batch | words/s | epoch (s, derived) |",
            "|---:|---:|---:|---:|",
        ]
        lines += [
            f"| {r['hidden_size']} | {r['batch_size']} | {r['train_words_per_sec']:,.0f} | "
            f"{r['epoch_time_s_derived']:.1f} |"
            for r in report["scaling"]
        ]
    return "\n".join(lines) + "\n"


def plot_scaling(rows: list[dict], path: Path, title: str) -> None:
    try:  # last, and optional: a bare GPU machine may have torch but no matplotlib
        import matplotlib
    except ImportError:
        click.echo(f"matplotlib is not installed: no {path.name}; the table has the numbers")
        return
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.8), dpi=120)
    for ax, key in zip(axes, ("hidden_size", "batch_size"), strict=True):
        picked = [r for r in rows if r["vary"] == key]
        ax.plot([r[key] for r in picked], [r["epoch_time_s_derived"] for r in picked], "o-")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(key.replace("_", " "))
        ax.set_ylabel("time per epoch (s, derived)")
        ax.grid(True, which="both", alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


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


def size_groups(
    configs: list[str], models: dict[str, ModelConfig]
) -> list[list[tuple[str, ModelConfig]]]:
    """The configs asked for, grouped: a 2014 config first, then the variants of its size.

    A variant (GRU, tied, variational) is timed in the same interleaved rounds as the
    2014 model of its size: the same config with the variant switches at their defaults,
    named after a config of params.yaml that is exactly that (small for small-tied), else
    `<variant> as 2014`. It joins the run whether asked for or not.
    """
    defaults = {f.name: f.default for f in fields(ModelConfig) if f.name in VARIANT_KEYS}
    groups: dict[ModelConfig, list[tuple[str, ModelConfig]]] = {}
    for name in configs:
        if name not in models:
            raise click.BadParameter(
                f"{name!r} is not a config of params.yaml", param_hint="--configs"
            )
        config = models[name]
        plain = replace(config, **defaults)
        base = next((n for n, c in models.items() if c == plain), f"{name} as 2014")
        group = groups.setdefault(plain, [(base, plain)])
        if config != plain:
            group.append((name, config))
    return list(groups.values())


def _list(kind: Callable[[str], object]) -> Callable:
    return lambda ctx, param, value: [kind(v) for v in value.split(",") if v]


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--configs",
    default="small",
    show_default=True,
    callback=_list(str),
    help="Comma-separated configs of params.yaml, e.g. small,small-tied,small-gru; each "
    "variant is timed beside the 2014 model of its size.",
)
@click.option(
    "--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True
)
@click.option(
    "--precisions",
    default="fp32,bf16",
    show_default=True,
    callback=_list(str),
    help=f"Precisions of ours to measure ({', '.join(PRECISIONS)}); plain runs fp32, and tf32 "
    "too if asked for.",
)
@click.option(
    "--eager/--no-eager",
    "with_eager",
    default=True,
    show_default=True,
    help="On CUDA, also time ours without CUDA graphs (what the graphs bring).",
)
@click.option("--warmup", default=5, show_default=True, help="Untimed steps per candidate.")
@click.option("--steps", default=20, show_default=True, help="Timed steps per round.")
@click.option("--rounds", default=5, show_default=True, help="Interleaved rounds (median).")
@click.option(
    "--eval-words",
    default=20_000,
    show_default=True,
    help="Test tokens ours scores at batch 1 (plain: a tenth of them).",
)
@click.option(
    "--trajectory-steps",
    default=20,
    show_default=True,
    help="Steps of the ours-vs-plain trajectory check (0: skip).",
)
@click.option(
    "--scaling/--no-scaling",
    default=True,
    show_default=True,
    help="Time per epoch vs hidden size 200/650/1500 and batch size 20/64/256.",
)
@click.option("--scaling-steps", default=5, show_default=True, help="Timed steps per case.")
@click.option(
    "--scaling-precision", default="fp32", show_default=True, help="Precision of the scaling runs."
)
@click.option("--memory/--no-memory", default=True, show_default=True)
@click.option("--threads", default=0, show_default=True, help="torch threads (0: default).")
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=ROOT / "benchmarks" / "results",
    show_default=True,
    help="Folder for <device>.json, <device>.md and the scaling PNG.",
)
@click.option("--note", default="", help="Free text saved with the results (e.g. 'contended').")
@click.option("--seed", default=1234, show_default=True)
def main(
    configs: list[str],
    device: str,
    precisions: list[str],
    warmup: int,
    steps: int,
    rounds: int,
    eval_words: int,
    trajectory_steps: int,
    scaling: bool,
    scaling_steps: int,
    scaling_precision: str,
    with_eager: bool,
    memory: bool,
    threads: int,
    out: Path,
    note: str,
    seed: int,
) -> None:
    """Measure ptblm's training and evaluation speed against a plain PyTorch loop."""
    started = time.perf_counter()
    if threads:
        torch.set_num_threads(threads)
    keep_freed_memory()  # what `train` does; process-wide, so the plain loop gains from it too
    params = load_params(ROOT / "params.yaml")
    dev = resolve_device(device)
    work = load_workload(dev, params.models["small"].vocab_size, seed)
    precisions = supported(precisions, dev)
    names = candidate_names(precisions, with_eager and dev.type == "cuda")
    report: dict = {
        "environment": environment(dev),
        "data": work.source,
        "note": note,
        "results": [],
        "trajectory": {},
        "scaling": [],
    }
    for group in size_groups(configs, params.models):
        (base, base_config), variants = group[0], group[1:]
        jobs = [(base, base_config, c) for c in names]
        jobs += [(name, config, c) for name, config in variants for c in ours(names)]
        click.echo(
            f"{', '.join(name for name, _ in group)}: training ({rounds} rounds x {steps} "
            "steps, interleaved)"
        )
        trained = measure_training(jobs, work, warmup, steps, rounds, seed)
        for name, config in group:
            candidates = names if name == base else ours(names)
            click.echo(f"{name}: evaluation at batch size 1")
            evaluated = measure_evaluation(config, work, candidates, eval_words, eval_words // 10)
            for candidate in candidates:
                result = trained[name, candidate]
                rate = result["train_words_per_sec"]
                row = {"config": name, "candidate": candidate, **result}
                if name == base:
                    plain = baseline(candidate, names)
                    row["baseline"] = plain
                    row["speedup_vs_plain"] = round(
                        rate / trained[base, plain]["train_words_per_sec"], 3
                    )
                else:
                    row["baseline_config"] = base
                    row["speedup_vs_baseline_config"] = round(
                        rate / trained[base, candidate]["train_words_per_sec"], 3
                    )
                row["eval_words_per_sec"] = evaluated[candidate]
                if memory:
                    row.update(measure_peak_memory(config, work, candidate, seed))
                report["results"].append(row)
                versus = (
                    f"x{row['speedup_vs_plain']:.2f} plain"
                    if name == base
                    else f"x{row['speedup_vs_baseline_config']:.2f} {base}"
                )
                click.echo(
                    f"  {candidate:16s} {rate:>10,.0f} words/s {versus}  "
                    f"epoch {row['epoch_time_s_derived']:7.1f} s"
                    f"  eval {row['eval_words_per_sec']:>9,.0f} words/s"
                )
        if trajectory_steps:
            check = check_trajectory(base_config, work, precisions, trajectory_steps, seed)
            report["trajectory"][base] = check
            for candidate, value in check.items():
                if isinstance(value, dict):
                    click.echo(
                        f"  trajectory {candidate}: relative difference, geometric mean "
                        f"{value['geomean_rel_cost_diff']:.2e}, "
                        f"max {value['max_rel_cost_diff']:.2e}"
                    )
    out.mkdir(parents=True, exist_ok=True)
    if scaling:
        click.echo(f"scaling (ours, {scaling_precision})")
        report["scaling_precision"] = scaling_precision
        report["scaling"] = measure_scaling(
            params.models["small"],
            work,
            scaling_steps,
            [200, 650, 1500],
            [20, 64, 256],
            seed,
            scaling_precision,
        )
    report["environment"]["benchmark_seconds"] = round(time.perf_counter() - started, 1)
    (out / f"{dev.type}.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    text = markdown(report)
    (out / f"{dev.type}.md").write_text(text, encoding="utf-8")
    click.echo(text)
    if report["scaling"]:
        plot_scaling(
            report["scaling"],
            out / f"scaling-{dev.type}.png",
            f"ptblm time per epoch, {report['environment']['device_name']}",
        )


if __name__ == "__main__":
    main()
