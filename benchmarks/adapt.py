"""Test-time adaptation speed, side by side with static evaluation in one process.

Per config, interleaved round after round on the same tokens at batch size 1, state
carried: static evaluation (`evaluate_split`, what `ptblm evaluate` runs), the neural
cache (the stream read once, then the cache at one window and theta: what the adapt stage
and `ptblm score --cache` run), and dynamic evaluation (`dynamic_logprobs`, rms rule).
Each reports the median words/s of its rounds. Weights are freshly initialized: the speed
does not depend on their values.

    python benchmarks/adapt.py                                   # CPU: small and small-tied
    python benchmarks/adapt.py --tokens 20000 --out benchmarks/results/cpu-adapt
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import click
import torch

from ptblm.adapt import CacheChoice, adapted_logprobs
from ptblm.config import load_params
from ptblm.data import load_split
from ptblm.device import resolve_device
from ptblm.dynamic import DynamicSettings, gradient_rms
from ptblm.epoch import evaluate_split
from ptblm.model import PTBModel
from report import environment


def cpu_model() -> str:
    """The CPU's model name (platform.processor() is often just the architecture)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def timed(run) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


@click.command()
@click.option("--configs", default="small,small-tied", show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.option("--tokens", default=20_000, show_default=True, help="Of the test split.")
@click.option("--rounds", default=3, show_default=True)
@click.option("--window", default=500, show_default=True, help="The cache's window.")
@click.option("--segment", default=5, show_default=True, help="Dynamic evaluation's segment.")
@click.option(
    "--out", type=click.Path(path_type=Path), default=None, help="Folder for adapt.json/.md."
)
def main(configs, device, tokens, rounds, window, segment, out):
    """Words/s of static evaluation, the neural cache and dynamic evaluation (module doc)."""
    params = load_params()
    device = resolve_device(device)
    try:
        ids = load_split(Path("data/prepared"), "test")[:tokens]
        data = f"PTB test split, first {ids.numel():,} tokens"
    except Exception:  # no prepared data: the speed does not depend on the words
        ids = torch.randint(0, 10_000, (tokens,), generator=torch.Generator().manual_seed(0))
        data = f"{tokens:,} random ids"
    results = {}
    for name in configs.split(","):
        config = params.models[name]
        torch.manual_seed(0)
        model = PTBModel(config).to(device).eval()
        train_ids = torch.randint(0, config.vocab_size, (20_000,))
        rms = gradient_rms(model, train_ids, 100, segment, device)
        methods = {
            "static": lambda m=model: evaluate_split(m, ids, 1, device, desc="static"),
            "cache": lambda m=model: adapted_logprobs(
                m, ids, device, CacheChoice(window, 0.3, 0.1)
            ),
            "dynamic": lambda m=model, r=rms: adapted_logprobs(
                m, ids, device, DynamicSettings(5e-5, 2e-3, segment, "rms"), r
            ),
        }
        seconds = {method: [] for method in methods}
        for _ in range(rounds):
            for method, run in methods.items():
                seconds[method].append(timed(run))
        words = ids.numel() - 1
        rates = {m: statistics.median(words / s for s in runs) for m, runs in seconds.items()}
        results[name] = {
            **{f"{m}_words_per_sec": round(r, 1) for m, r in rates.items()},
            **{f"{m}_vs_static": round(r / rates["static"], 3) for m, r in rates.items()},
            "rounds_s": {m: [round(s, 3) for s in runs] for m, runs in seconds.items()},
        }
        click.echo(
            f"{name}: static {rates['static']:,.0f} words/s, cache {rates['cache']:,.0f} "
            f"({rates['cache'] / rates['static']:.2f}x), dynamic {rates['dynamic']:,.0f} "
            f"({rates['dynamic'] / rates['static']:.3f}x)"
        )
    env = environment(device) | {"cpu_model": cpu_model()}
    report = {
        "environment": env,
        "data": data,
        "settings": {"window": window, "segment": segment, "rounds": rounds},
        "results": results,
    }
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "adapt.json").write_text(json.dumps(report, indent=2) + "\n")
        (out / "adapt.md").write_text(markdown(report))
        click.echo(f"wrote {out / 'adapt.json'} and {out / 'adapt.md'}")


def markdown(report: dict) -> str:
    env = report["environment"]
    lines = [
        f"# Test-time adaptation speed: {env['cpu_model'] or env['device_name']} ({env['device']})",
        "",
        f"{env['date']}, torch {env['torch']}, {env['threads']} threads, commit {env['commit']}; "
        f"{report['data']}; cache window {report['settings']['window']}, dynamic segment "
        f"{report['settings']['segment']}; median of {report['settings']['rounds']} "
        "interleaved rounds.",
        "",
        f"Command: `{env['command']}`",
        "",
        "| config | static words/s | cache words/s | cache / static | dynamic words/s "
        "| dynamic / static |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, r in report["results"].items():
        lines.append(
            f"| {name} | {r['static_words_per_sec']:,.0f} | {r['cache_words_per_sec']:,.0f} "
            f"| {r['cache_vs_static']:.2f} | {r['dynamic_words_per_sec']:,.0f} "
            f"| {r['dynamic_vs_static']:.3f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
