"""The plain PyTorch loop trained through a config's whole schedule, scored as ptblm scores.

The benchmark's trajectory check follows 20 steps; this answers the question for a
whole run: do ptblm's final perplexities land where the loop most people write lands,
from the same seed and the same initial weights? The plain loop (`plain.PlainModel`,
`ptblm.reference.reference_step`) trains with the tutorial's schedule; after every epoch its
weights go into a `PTBModel` and ptblm's own `score_epoch` / `evaluate_split` score them,
so any difference comes from training alone. Given ours' results (`metrics/<config>`
of a `ptblm train` + `ptblm evaluate` from the same params), it prints and saves the
relative differences.

    python benchmarks/plain_run.py --config small --ours metrics/small
    python benchmarks/plain_run.py --config medium --device cuda --precision tf32 --ours ...

Run it from the project root, like `ptblm`: it reads `params.yaml` and `data/prepared`.
A checkpoint after every epoch (`checkpoints/plain-<config>/last.pt`) lets an
interrupted run resume where it stopped; it is removed when the run completes.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import click
import torch
from tqdm import tqdm

from plain import PlainModel
from ptblm.checkpoint import TrainState, load_checkpoint, save_checkpoint
from ptblm.commands.common import CHECKPOINT_DIR, PREPARED_DIR, params_option
from ptblm.config import Params, load_params
from ptblm.data import batchify, iterate_batches, load_corpus
from ptblm.device import resolve_device, set_precision
from ptblm.epoch import evaluate_split, perplexity, score_epoch
from ptblm.errors import PtblmError
from ptblm.fsutil import write_json
from ptblm.model import PTBModel
from ptblm.reference import reference_step
from ptblm.schedule import learning_rate
from report import environment
from workload import synchronize

TOLERANCE = 0.005  # the bound on a GPU: final perplexities within 0.5%


def train_plain(
    config_name: str, params: Params, device_name: str, precision: str, checkpoint: Path
) -> dict:
    """Plain-loop training of `config_name` to the end; its history and final perplexities."""
    config = params.models[config_name]
    corpus = load_corpus(PREPARED_DIR)
    device = resolve_device(device_name)
    torch.manual_seed(params.train.seed)  # as `ptblm train`: the same initial weights
    set_precision(precision, device)
    ours = PTBModel(config).to(device)
    with torch.random.fork_rng(devices=[]):  # PlainModel's own init leaves the RNG where
        model = PlainModel(ours)  # ptblm's training starts: on CPU, the same dropout masks
    optimizer = torch.optim.SGD(model.parameters(), lr=config.learning_rate)
    identity = {
        "config_name": f"plain-{config_name}",
        "config": asdict(config),
        "vocab_fingerprint": corpus.fingerprint,
        "seed": params.train.seed,
        "precision": precision,
    }
    state = load_checkpoint(checkpoint, identity, model, optimizer) or TrainState()
    if state.epoch:
        tqdm.write(f"resuming plain {config_name} after epoch {state.epoch} from {checkpoint}")
    train_data = batchify(corpus.splits["train"], config.batch_size).to(device)
    valid_data = batchify(corpus.splits["valid"], config.batch_size).to(device)
    steps = (train_data.size(1) - 1) // config.num_steps
    for epoch in range(state.epoch + 1, config.max_max_epoch + 1):
        lr = learning_rate(config, epoch, state.history)
        for group in optimizer.param_groups:
            group["lr"] = lr
        model.train()
        carried = ours.zero_state(config.batch_size, device)
        total = 0.0
        start = time.perf_counter()
        batches = iterate_batches(train_data, config.num_steps, False)
        bar = tqdm(batches, total=steps, desc=f"plain epoch {epoch}", leave=False, disable=None)
        for x, y in bar:
            cost, carried = reference_step(model, optimizer, x, y, carried, config.max_grad_norm)
            total += cost.item()
        synchronize(device)
        seconds = time.perf_counter() - start
        valid = score_epoch(model.copy_into(ours), valid_data, config.num_steps, desc="valid")
        record = {
            "epoch": epoch,
            "lr": lr,
            "train_perplexity": perplexity(total, steps * config.num_steps),
            "valid_perplexity": valid.perplexity,
            "words_per_sec": steps * config.num_steps * config.batch_size / seconds,
            "train_seconds": seconds,
        }
        state.history.append(record)
        state.epoch = epoch
        save_checkpoint(checkpoint, identity, model, optimizer, state)
        tqdm.write(
            f"plain epoch {epoch:3d}  lr {lr:.4f}  train ppl {record['train_perplexity']:8.2f}  "
            f"valid ppl {valid.perplexity:8.2f}  {record['words_per_sec']:9.0f} words/s"
        )
    model.copy_into(ours)
    batch = params.evaluate.batch_size
    scores = {
        split: evaluate_split(ours, corpus.splits[split], batch, device, precision, desc=split)
        for split in ("test", "valid")
    }
    last = state.history[-1]
    return {
        "config": config_name,
        "device": str(device),
        "precision": precision,
        "seed": params.train.seed,
        "history": state.history,
        "train_perplexity": last["train_perplexity"],
        "valid_perplexity": last["valid_perplexity"],
        "test_perplexity": scores["test"].perplexity,
        "eval_valid_perplexity": scores["valid"].perplexity,
        "training_time_s": sum(r["train_seconds"] for r in state.history),
    }


def read_ours(ours_dir: Path, config_name: str) -> dict:
    """Ours' final perplexities from metrics/<config> (read before training: fail fast)."""
    try:
        trained = json.loads((ours_dir / "train.json").read_text(encoding="utf-8"))
        scored = json.loads((ours_dir / "eval.json").read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError) as exc:
        raise click.BadParameter(
            f"{ours_dir}: no readable train.json and eval.json ({exc}); "
            "point it at a metrics/<config> folder written by ptblm train + evaluate",
            param_hint="--ours",
        ) from None
    if trained.get("config") != config_name or scored.get("config") != config_name:
        raise click.BadParameter(
            f"{ours_dir} holds results of config {trained.get('config')!r}, not "
            f"{config_name!r}; point it at metrics/{config_name}",
            param_hint="--ours",
        )
    return {
        "train_perplexity": trained["train_perplexity"],
        "valid_perplexity": scored["valid_perplexity"],
        "test_perplexity": scored["test_perplexity"],
    }


def compare(plain: dict, ours: dict) -> dict:
    """Ours' final perplexities relative to the plain loop's: (ours - plain) / plain."""
    theirs = {
        "train_perplexity": plain["train_perplexity"],
        "valid_perplexity": plain["eval_valid_perplexity"],
        "test_perplexity": plain["test_perplexity"],
    }
    result: dict = {
        key: {"ours": ours[key], "plain": p, "relative_difference": (ours[key] - p) / p}
        for key, p in theirs.items()
    }
    result["tolerance"] = TOLERANCE
    result["within_tolerance"] = all(
        abs(result[key]["relative_difference"]) <= TOLERANCE
        for key in ("valid_perplexity", "test_perplexity")
    )
    return result


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_name",
    default="small",
    show_default=True,
    help="Config of params.yaml to train with the plain loop.",
)
@params_option
@click.option(
    "--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True
)
@click.option(
    "--precision",
    type=click.Choice(["fp32", "tf32"]),
    default="fp32",
    show_default=True,
    help="The plain loop has no autocast: fp32 or tf32.",
)
@click.option(
    "--ours",
    "ours_dir",
    type=click.Path(path_type=Path),
    default=None,
    help="metrics/<config> of ptblm train + evaluate, to compare against.",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=Path("benchmarks/results"),
    show_default=True,
    help="Folder for plain-<config>.json.",
)
def main(
    config_name: str,
    params_path: Path,
    device: str,
    precision: str,
    ours_dir: Path | None,
    out: Path,
) -> None:
    """Train a config with the plain PyTorch loop to the end; compare ours' final perplexities."""
    started = time.perf_counter()
    checkpoint = CHECKPOINT_DIR / f"plain-{config_name}" / "last.pt"
    try:
        params = load_params(params_path)
        if config_name not in params.models:
            raise click.BadParameter(
                f"{config_name!r} is not a config of {params_path}", param_hint="--config"
            )
        config = params.models[config_name]
        if (config.cell, config.tie_weights, config.dropout) != ("lstm", False, "standard"):
            raise click.BadParameter(
                f"{config_name!r} is a variant (cell, tie_weights or dropout); the plain loop "
                "is the 2014 model only",
                param_hint="--config",
            )
        ours = read_ours(ours_dir, config_name) if ours_dir is not None else None
        plain = train_plain(config_name, params, device, precision, checkpoint)
    except PtblmError as exc:
        raise click.ClickException(str(exc)) from None
    report = {
        "environment": environment(resolve_device(device)),
        "seconds": round(time.perf_counter() - started, 1),
        "plain": plain,
    }
    click.echo(
        f"plain {config_name} ({precision}): train {plain['train_perplexity']:.2f}  "
        f"valid {plain['eval_valid_perplexity']:.2f}  test {plain['test_perplexity']:.2f}"
    )
    if ours is not None:
        report["comparison"] = compare(plain, ours)
        for key, value in report["comparison"].items():
            if isinstance(value, dict):
                click.echo(
                    f"  {key}: ours {value['ours']:.2f}, plain {value['plain']:.2f}, "
                    f"{value['relative_difference']:+.2%}"
                )
        verdict = "yes" if report["comparison"]["within_tolerance"] else "NO"
        click.echo(f"  valid and test within {TOLERANCE:.1%} of the plain loop: {verdict}")
    write_json(out / f"plain-{config_name}.json", report)
    checkpoint.unlink(missing_ok=True)  # the run is saved: nothing left to resume


if __name__ == "__main__":
    main()
