"""`ptblm generate`: text sampled from a trained model, word by word.

The prompt is read after an <eos>, as every corpus sentence is; each next word is drawn
from softmax(logits / temperature), optionally among the top-k only, with a seeded
generator on the CPU, so a seed gives the same text on any device that computes the
same probabilities. Temperature 0 takes the most likely word every time.
"""

from __future__ import annotations

import torch

from .api import LanguageModel
from .errors import PtblmError
from .text import EOS, UNK


class GenerateError(PtblmError):
    """Settings that cannot sample; the message says which and what is allowed."""


def generate(
    lm: LanguageModel,
    prompt: list[str],
    words: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> list[str]:
    """`words` sampled tokens (an <eos> counts as one) following `prompt` (in-vocabulary
    words: map OOV ones to <unk> first)."""
    if words < 0:
        raise GenerateError(f"--words {words}: must be 0 or more")
    if temperature < 0:
        raise GenerateError(f"--temperature {temperature}: must be 0 (argmax) or more")
    if top_k is not None and not 1 <= top_k <= len(lm.vocab):
        raise GenerateError(f"--top-k {top_k}: must be between 1 and {len(lm.vocab)}")
    word_to_id = lm.word_to_id
    model = lm.model.eval()
    generator = torch.Generator().manual_seed(seed)
    ids = torch.tensor([[word_to_id[EOS], *(word_to_id[w] for w in prompt)]], device=device)
    state = model.zero_state(1, device)
    out: list[str] = []
    with torch.no_grad():
        for _ in range(words):
            logits, state = model(ids, state)
            # ids past the vocabulary (vocab_size may exceed it) are words that do not exist
            last = logits[0, -1, : len(lm.vocab)].float().cpu()
            next_id = _pick(last, temperature, top_k, generator)
            out.append(lm.vocab[next_id])
            ids = torch.tensor([[next_id]], device=device)
    return out


def _pick(
    logits: torch.Tensor, temperature: float, top_k: int | None, generator: torch.Generator
) -> int:
    if top_k is not None:
        kept = torch.topk(logits, top_k)
        logits = torch.full_like(logits, -torch.inf).scatter(0, kept.indices, kept.values)
    if temperature == 0:
        return int(logits.argmax())
    probs = torch.softmax(logits.double() / temperature, dim=0)
    return int(torch.multinomial(probs, 1, generator=generator))


def in_vocabulary(words: list[str], vocab: list[str]) -> tuple[list[str], list[str]]:
    """The prompt with OOV words as <unk>, and the OOV words (for a note)."""
    known = set(vocab)
    oov = [w for w in words if w not in known]
    if oov and UNK not in known:
        raise GenerateError(f"{' '.join(oov)}: not in the vocabulary, which has no {UNK}")
    return [w if w in known else UNK for w in words], oov


def as_text(prompt: list[str], sampled: list[str]) -> str:
    """Words joined by spaces, each <eos> a line break."""
    lines, current = [], []
    for word in [*prompt, *sampled]:
        if word == EOS:
            lines.append(" ".join(current))
            current = []
        else:
            current.append(word)
    lines.append(" ".join(current))
    return "\n".join(lines).rstrip(" ") + "\n"
