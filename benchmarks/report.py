"""The benchmark's report: the machine and commit it ran on, the markdown table, the plot."""

from __future__ import annotations

import datetime as dt
import multiprocessing
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path

import click
import torch

from candidates import PLAIN
from workload import ROOT


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
