"""Error bars: n, mean and sample standard deviation of a config trained with several seeds.

The runs come as folders, one per seed, each holding the `train.json` and `eval.json` a run
wrote under metrics/<config>/ (the GPU script keeps them so; `dvc exp` keeps them in git).
The summary is a metric file of its own, `metrics/<config>/seeds.json`, so `dvc metrics
show` and `ptblm compare --source metrics` carry the spread next to the single run.
"""

from __future__ import annotations

import json
import re
import statistics
from pathlib import Path

from .errors import PtblmError

SPLITS = ("train", "valid", "test")
SEED_FOLDER = re.compile(r"-seed(-?\d+)$")  # <config>-seed<N>


class SeedsError(PtblmError):
    """Runs missing or unreadable; the message names the folder."""


def read_run(folder: Path) -> dict[str, float]:
    """train / valid / test perplexity of the run whose metric files are in `folder`."""
    try:
        trained = json.loads((folder / "train.json").read_text(encoding="utf-8"))
        evaluated = json.loads((folder / "eval.json").read_text(encoding="utf-8"))
        return {
            "train": trained["train_perplexity"],
            "valid": trained["valid_perplexity"],
            "test": evaluated["test_perplexity"],
        }
    except (OSError, ValueError, KeyError) as exc:
        raise SeedsError(
            f"{folder}: no readable train.json and eval.json with perplexities ({exc}); "
            "train and evaluate that seed first"
        ) from None


def summarize(config: str, runs: dict[str, dict[str, float]]) -> dict:
    """n, per-seed perplexities, and each split's mean and sample sd (n - 1; null for n = 1)."""
    if not runs:
        raise SeedsError(f"no runs of {config!r} to summarize")
    summary: dict = {"config": config, "n": len(runs), "seeds": runs}
    for split in SPLITS:
        values = [run[split] for run in runs.values()]
        sd = statistics.stdev(values) if len(values) > 1 else None
        summary[split] = {"mean": statistics.mean(values), "sd": sd}
    return summary


def from_folders(config: str, folders: list[Path]) -> dict:
    """The summary of runs kept in folders named `<config>-seed<N>`."""
    runs = {}
    for folder in folders:
        match = SEED_FOLDER.search(folder.name)
        if match is None:
            raise SeedsError(f"{folder}: not named <config>-seed<N>; rename it")
        runs[match.group(1)] = read_run(folder)
    return summarize(config, dict(sorted(runs.items(), key=lambda item: int(item[0]))))


def line(summary: dict) -> str:
    """`small: n=3  test 112.40 ± 0.35 ...`: the summary in one line."""
    shown = [
        f"{s} {summary[s]['mean']:.2f} ± {summary[s]['sd'] or 0:.2f}" for s in ("test", "valid")
    ]
    return f"{summary['config']}: n={summary['n']}  " + "  ".join(shown)
