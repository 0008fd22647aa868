"""`ptblm score`: log-probability and perplexity of sentences under a trained model."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ..text import RULES
from .common import fails_cleanly
from .model_options import language_model, model_source

SCORE_HELP = f"""Log-probability and perplexity of sentences, one per line, from INPUT_FILE or
stdin (-).

Per sentence: words, OOV words (scored as <unk>), total log-probability (natural log) and
perplexity; then a total line. Each sentence is scored on its own: from the zero state,
after an <eos> (every corpus sentence follows one), predicting every word and the closing
<eos>. Words/s go to stderr.

Text is normalized the way PTB was prepared, so typed text reads as the model's training
text did: {RULES}. --no-normalize scores the words as given.

The whole input is read and checked first: an empty line, binary or non-UTF-8 input stops
it with that line's number, before anything is printed.
"""


@click.command(name="score", help=SCORE_HELP)
@model_source
@click.argument("input_file", type=click.Path(path_type=Path, dir_okay=False), default="-")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "jsonl"]), default="table")
@click.option(
    "--carry-state",
    is_flag=True,
    help="Score the lines as one stream, state carried, exactly as `ptblm evaluate` scores "
    "a split (its first token is context): prints the total only.",
)
@click.option("--no-normalize", is_flag=True, help="Score the words exactly as given.")
@fails_cleanly
def score_command(
    params_path: Path,
    model_name: str | None,
    model_uri: str | None,
    device: str,
    input_file: Path,
    fmt: str,
    carry_state: bool,
    no_normalize: bool,
) -> None:
    """Log-probability and perplexity of sentences (see SCORE_HELP)."""
    from ..score import parse, read_lines, render, score

    source = "stdin" if str(input_file) == "-" else str(input_file)
    try:
        data = sys.stdin.buffer.read() if source == "stdin" else input_file.read_bytes()
    except OSError as exc:
        raise click.ClickException(f"{source}: cannot read ({exc.strerror})") from None
    lines = read_lines(data, source)
    lm = language_model(params_path, model_name, model_uri, device)
    sentences = parse(lines, lm.vocab, normalized=not no_normalize)
    rows, total, rate = score(lm, sentences, device, carry_state=carry_state)
    click.echo(render(rows, total, fmt), nl=False)
    click.echo(f"{total.words + len(sentences):,} tokens scored, {rate:,.0f} words/s", err=True)
