"""GFLOP/s of the softmax layer's three products: MKL (torch's default) vs oneDNN, per layout.

Why `ptblm.model.Softmax` keeps TF's [hidden, vocab] weight and `ptblm.model.matmul`
sends float32 CPU products to oneDNN: this prints the figures behind that choice.

    python benchmarks/matmul.py                 # small config's shapes
    python benchmarks/matmul.py --hidden 650    # medium's
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import click
import torch

from ptblm.model import _onednn_linear


def gflops(fn: Callable[[], torch.Tensor], flop: float, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return flop / statistics.median(times) / 1e9


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--tokens", default=400, show_default=True, help="batch_size x num_steps")
@click.option("--hidden", default=200, show_default=True)
@click.option("--vocab", default=10_000, show_default=True)
@click.option("--repeats", default=30, show_default=True, help="Timed calls (median).")
def main(tokens: int, hidden: int, vocab: int, repeats: int) -> None:
    """Print GFLOP/s of logits, hidden-gradient and weight-gradient products."""
    onednn = _onednn_linear()
    if onednn is None:
        raise click.ClickException("this torch build has no oneDNN linear op; nothing to compare")
    gen = torch.Generator().manual_seed(0)
    h = torch.randn(tokens, hidden, generator=gen)
    g = torch.randn(tokens, vocab, generator=gen)
    w_linear = torch.randn(vocab, hidden, generator=gen)  # nn.Linear's layout
    w_tf = w_linear.t().contiguous()  # TF's softmax_w layout, [hidden, vocab]
    b = torch.randn(vocab, generator=gen)
    cases = {
        "logits": (
            lambda: torch.addmm(b, h, w_linear.t()),
            lambda: onednn(h, w_tf.t(), b, "none", [], ""),
        ),
        "hidden grad": (lambda: g @ w_linear, lambda: onednn(g, w_tf, None, "none", [], "")),
        "weight grad": (lambda: g.t() @ h, lambda: onednn(h.t(), g.t(), None, "none", [], "")),
    }
    flop = 2.0 * tokens * hidden * vocab
    click.echo(f"{torch.get_num_threads()} threads, [{tokens} x {hidden}] x [{hidden} x {vocab}]")
    click.echo(f"{'product':12s} {'MKL, nn.Linear layout':>22s} {'oneDNN, TF layout':>18s}")
    for name, (mkl, dnn) in cases.items():
        click.echo(
            f"{name:12s} {gflops(mkl, flop, repeats):16.0f} GF/s {gflops(dnn, flop, repeats):12.0f}"
            " GF/s"
        )


if __name__ == "__main__":
    main()
