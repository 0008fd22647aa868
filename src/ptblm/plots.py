"""The learning-curve PNG people look at (DVC renders history.csv on its own)."""

from __future__ import annotations

from pathlib import Path

from .fsutil import atomic_path


def save_learning_curve(history: list[dict[str, float]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    epochs = [r["epoch"] for r in history]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    ax.plot(epochs, [r["train_perplexity"] for r in history], "o-", label="train")
    ax.plot(epochs, [r["valid_perplexity"] for r in history], "s-", label="valid")
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("perplexity (log scale)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
