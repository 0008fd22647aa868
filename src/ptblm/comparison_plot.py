"""The picture of `ptblm compare --plot`: every config's test perplexity beside the
published ones, one row per config, so a glance says which variant helps and by how much."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .compare import REFERENCE
from .fsutil import atomic_path

MARKERS = ["x", "+", "^", "v", "D", "s"]  # one per published source, in REFERENCE's order
SIZES = ("small", "medium", "large")  # rows top to bottom; a variant below its 2014 config


def _order(config: str) -> tuple:
    base = config.split("-")[0]
    return (SIZES.index(base) if base in SIZES else len(SIZES), config != base, config)


def save_comparison(table: pd.DataFrame, path: Path) -> None:
    """`table` as `compare.with_reference` gives it. Configs without a published number
    (`test`) are left out: a perplexity of hundreds would squash the rest. Our single runs
    are dots; a group of seeds (a row with n > 1) is its mean with a ±1 sd bar; a run's
    test perplexity with the neural cache and with dynamic evaluation, triangles above it."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    published = table["run"].isin(REFERENCE)
    configs = sorted(set(table.loc[published, "config"]), key=_order)
    ours = table[~published & table["config"].isin(configs) & table["test"].notna()]
    n = pd.to_numeric(ours.get("n", pd.Series(1, index=ours.index))).fillna(1)
    groups, singles = ours[n > 1], ours[n <= 1]
    row = {config: i for i, config in enumerate(configs)}

    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.55 * len(configs)), dpi=120)
    ax.scatter(
        pd.to_numeric(singles["test"]),
        singles["config"].map(row),
        color="tab:blue",
        alpha=0.6 if len(groups) else 1.0,
        zorder=3,
        label="ptb-lm, one run",
    )
    if len(groups):
        ax.errorbar(
            pd.to_numeric(groups["test"]),
            groups["config"].map(row),
            xerr=pd.to_numeric(groups["sd test"]),
            fmt="o",
            color="tab:red",
            capsize=4,
            zorder=4,
            label="ptb-lm, mean ± sd of seeds",
        )
    for column, color, marker in (
        ("test cache", "tab:green", ">"),
        ("test dynamic", "tab:purple", "<"),
    ):
        adapted = singles[pd.to_numeric(singles.get(column), errors="coerce").notna()]
        if len(adapted):  # the same model at test time: the adapt stage
            ax.scatter(
                pd.to_numeric(adapted[column]),
                adapted["config"].map(row) - 0.2,  # just above the static dot
                marker=marker,
                color=color,
                s=45,
                zorder=3,
                label=f"ptb-lm, {column.removeprefix('test ')} (adapt stage)",
            )
    for marker, source in zip(MARKERS, REFERENCE, strict=False):
        rows = table[(table["run"] == source) & table["test"].notna()]
        if len(rows):
            ax.scatter(
                pd.to_numeric(rows["test"]),
                rows["config"].map(row) + 0.2,  # just below ours: both stay readable
                marker=marker,
                color="0.35",
                s=55,
                zorder=2,
                label=source,
            )
    ax.set_yticks(range(len(configs)), configs)
    ax.invert_yaxis()
    ax.set_xlabel("test perplexity (lower is better)")
    ax.grid(True, axis="x", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
