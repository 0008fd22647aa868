"""Input text made to look like PTB's, so a model trained on it scores what it was taught.

Mikolov's PTB text is lowercased, has every number replaced by `N` ("5 %" is `N N`),
clitics split off (`did n't`, `company 's`), and no sentence punctuation. Text typed
by hand is not: "The company said." would otherwise be scored as two unknown words.
Pure Python, so `ptblm score --help` and the tests need nothing else.
"""

from __future__ import annotations

import re
from collections.abc import Container

EOS = "<eos>"
UNK = "<unk>"
NUMBER = "N"
KEEP = frozenset({EOS, UNK, NUMBER})  # PTB's own tokens, never rewritten

# A number as written: 5, -3, 1,000, 3.5, .25, 1/2; or a percent sign (PTB has `N N` for 5 %).
_NUMBER = re.compile(r"^[+-]?(\d[\d,]*(\.\d+)?|\.\d+|\d+/\d+)$|^%$")
_CLITIC = re.compile(r"^(.*[a-z])(n't|'s|'re|'ve|'m|'ll|'d)$")
_EDGE_PUNCT = '"`,;:?!()[]{}'  # PTB dropped these; `'`, `$`, `&`, `#`, `-` it kept
_SPLIT = re.compile(r"([$%])")  # "$5" -> "$ 5", "5%" -> "5 %"

RULES = (
    "lowercase; numbers (5, 1,000, 3.5, 1/2) and % become N; $ splits off; clitics split "
    "(didn't -> did n't, company's -> company 's); quotes, brackets and , ; : ? ! are "
    "dropped; a trailing period is dropped unless the word with it is in the vocabulary "
    "(mr., u.s., inc.); words in the vocabulary (lowercased) and <unk>, <eos>, N are kept whole"
)


def normalize(line: str, vocab: Container[str]) -> list[str]:
    """The words of `line` as PTB writes them (see RULES); idempotent on PTB's own text."""
    words: list[str] = []
    for raw in line.split():
        lowered = raw.lower()
        if raw in KEEP or lowered in vocab:  # a known word (us$, mr.) is not taken apart
            words.append(raw if raw in KEEP else lowered)
            continue
        for part in _SPLIT.split(lowered):
            words.extend(_word(part, vocab))
    return words


def _word(token: str, vocab: Container[str]) -> list[str]:
    token = token.strip(_EDGE_PUNCT)
    if token.endswith(".") and token not in vocab:
        token = token.rstrip(".")
    if not token:
        return []
    if _NUMBER.match(token):
        return [NUMBER]
    clitic = _CLITIC.match(token)
    if clitic and token not in vocab:
        return [clitic.group(1), clitic.group(2)]
    return [token]
