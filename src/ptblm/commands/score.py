"""`ptblm score`: log-probability and perplexity of sentences under a trained model."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ..text import RULES
from .adapt_options import adaptation_options, chosen_adaptation
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

Out-of-vocabulary words score low perplexity, not high: each is scored as <unk>, one of
PTB's most frequent words, so a line of made-up words ("Zyzzyva quux foobar.") can score
better than a real sentence. The oov column counts them; a line with more than half of its
words out of vocabulary is also named in a warning on stderr.

The whole input is read and checked first: an empty line (or one with no words once
normalized), binary or non-UTF-8 input stops it with that line's number, before anything
is printed. --skip-empty leaves empty lines out instead (the rest keep their numbers).

With --carry-state, --cache or --dynamic adapt the model to the stream as it is read (the
adapt stage's methods): the neural cache, or dynamic evaluation (each segment scored, then
learned from; the model file is not changed). Their values default to the ones the adapt
stage tuned on the valid split for this config (metrics/<config>/adapt.json).
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
@adaptation_options
@click.option("--no-normalize", is_flag=True, help="Score the words exactly as given.")
@click.option(
    "--skip-empty",
    is_flag=True,
    help="Leave out empty lines (and lines with no words once normalized) instead of "
    "stopping; the others keep their line numbers.",
)
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
    skip_empty: bool,
    **adapt_options,
) -> None:
    """Log-probability and perplexity of sentences (see SCORE_HELP)."""
    from ..score import MOSTLY_OOV, mostly_oov, parse, read_lines, render, score

    source = "stdin" if str(input_file) == "-" else str(input_file)
    try:
        data = sys.stdin.buffer.read() if source == "stdin" else input_file.read_bytes()
    except OSError as exc:
        raise click.ClickException(f"{source}: cannot read ({exc.strerror})") from None
    lines = read_lines(data, source)
    lm = language_model(params_path, model_name, model_uri, device)
    sentences = parse(lines, lm.vocab, normalized=not no_normalize, skip_empty=skip_empty)
    adaptation = chosen_adaptation(params_path, model_name, model_uri, **adapt_options)
    if adaptation is None:
        rows, total, rate = score(lm, sentences, device, carry_state=carry_state)
    elif not carry_state:
        raise click.UsageError("--cache and --dynamic read one stream: add --carry-state")
    else:
        from ..adapt import score_adapted

        rows, (total, rate) = [], score_adapted(lm, sentences, device, *adaptation)
    click.echo(render(rows, total, fmt), nl=False)
    if skipped := len(lines) - len(sentences):
        click.echo(f"note: {skipped:,} empty line(s) left out (--skip-empty)", err=True)
    for s in mostly_oov(sentences):
        click.echo(
            f"warning: line {s.line}: {len(s.oov)} of {len(s.words)} words not in the "
            f"vocabulary (over {MOSTLY_OOV:.0%}), each scored as <unk>, a frequent word: its "
            "perplexity is low for that, not because the sentence is likely",
            err=True,
        )
    click.echo(f"{total.words + len(sentences):,} tokens scored, {rate:,.0f} words/s", err=True)
