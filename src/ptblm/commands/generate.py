"""`ptblm generate`: sample text from a trained model."""

from __future__ import annotations

from pathlib import Path

import click

from .common import fails_cleanly
from .model_options import language_model, model_source


@click.command()
@model_source
@click.option("--prompt", default="", help="Text to continue (normalized as `score` does).")
@click.option("--words", type=int, default=30, show_default=True, help="Tokens to sample.")
@click.option(
    "--temperature",
    type=float,
    default=1.0,
    show_default=True,
    help="Softmax temperature; 0 takes the most likely word every time.",
)
@click.option("--top-k", type=int, default=None, help="Sample among the k likeliest words only.")
@click.option("--seed", type=int, default=0, show_default=True, help="Same seed, same text.")
@click.option("--no-normalize", is_flag=True, help="Use the prompt's words exactly as given.")
@fails_cleanly
def generate(
    params_path: Path,
    model_name: str | None,
    model_uri: str | None,
    device: str,
    prompt: str,
    words: int,
    temperature: float,
    top_k: int | None,
    seed: int,
    no_normalize: bool,
) -> None:
    """Sample text from a trained model, after the prompt; each <eos> prints as a line break.

    Prompt words outside the vocabulary become <unk> (a note on stderr names them).
    """
    from ..generate import as_text, generate, in_vocabulary
    from ..text import normalize

    lm = language_model(params_path, model_name, model_uri, device)
    given = prompt.split() if no_normalize else normalize(prompt, set(lm.vocab))
    known, oov = in_vocabulary(given, lm.vocab)
    if oov:
        click.echo(f"note: not in the vocabulary, read as <unk>: {' '.join(oov)}", err=True)
    sampled = generate(lm, known, words, temperature, top_k, seed, device)
    click.echo(as_text(known, sampled), nl=False)
