"""The logged MLflow model: a pyfunc that scores sentences, so runs can be compared on text.

Imported only when tracking is on (it subclasses mlflow's PythonModel); the scoring
itself, `sentence_perplexity`, needs only torch.
"""

from __future__ import annotations

import math
from pathlib import Path

import mlflow.pyfunc
import torch

from .data import EOS
from .model import PTBModel

UNK = "<unk>"


def sentence_perplexity(model: PTBModel, word_to_id: dict[str, int], text: str) -> float:
    """Perplexity of one sentence as the corpus is read: words, then <eos>; OOV -> <unk>.

    The first word has no context, so (as in the tutorial's scoring) it is not predicted.
    """
    words = [*text.split(), EOS]
    if len(words) < 2:
        raise ValueError("a sentence needs at least one word")
    ids = torch.tensor([[word_to_id.get(w, word_to_id[UNK]) for w in words]])
    model.eval()
    with torch.no_grad():
        cost, _ = model.cost(ids[:, :-1], ids[:, 1:], model.zero_state(1))
    return math.exp(cost.item() / (ids.size(1) - 1))


class SentenceScorer(mlflow.pyfunc.PythonModel):
    """predict(DataFrame with a `text` column, or a list of str) -> perplexity per sentence."""

    def load_context(self, context) -> None:
        from .config import ModelConfig

        payload = torch.load(context.artifacts["model"], map_location="cpu", weights_only=True)
        self.model = PTBModel(ModelConfig(**payload["config"]))
        self.model.load_state_dict(payload["state_dict"])
        vocab = Path(context.artifacts["vocab"]).read_text(encoding="utf-8").split("\n")[:-1]
        self.word_to_id = {w: i for i, w in enumerate(vocab)}

    def predict(self, context, model_input, params=None) -> list[float]:
        texts = model_input["text"] if hasattr(model_input, "columns") else model_input
        return [sentence_perplexity(self.model, self.word_to_id, str(t)) for t in texts]
