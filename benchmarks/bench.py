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

import json
import time
from collections.abc import Callable
from dataclasses import fields, replace
from pathlib import Path

import click
import torch

from candidates import baseline, candidate_names, ours, supported
from peak_memory import measure_peak_memory
from ptblm.config import PRECISIONS, ModelConfig, load_params
from ptblm.device import keep_freed_memory, resolve_device
from report import environment, markdown, plot_scaling
from timing import measure_evaluation, measure_scaling, measure_training
from trajectory import check_trajectory
from workload import ROOT, load_workload

# What makes a config a variant of the 2014 model, in how it computes (lr_schedule only
# changes the learning rates, not the step).
VARIANT_KEYS = ("cell", "tie_weights", "dropout")


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
