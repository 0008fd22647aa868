"""The logged MLflow model, as code (MLflow's models-from-code): sentences in, perplexities out.

`model_logging.log_model` logs this file as `python_model`, the weights file and
vocabulary as artifacts, and ptblm's source as code, so loading the model runs this file
and reads two plain files: no Python object is unpickled. MLflow runs it as a standalone
module (not as part of the package), hence the absolute imports.

predict accepts a list of sentences, a DataFrame with a `text` column (MLflow passes its
string column on as a list), or one sentence as a bare string. Each sentence is
normalized as `ptblm score` does and scored on its own (see ptblm.score).
"""

from __future__ import annotations

import functools
from typing import Any

import mlflow
from mlflow.pyfunc import PythonModel

from ptblm.api import load_files
from ptblm.errors import PtblmError
from ptblm.score import parse, score

EXAMPLE = ("the company said it expects to report a loss", "The shares rose 5% to $12.50.")


class SentenceScorer(PythonModel):
    def load_context(self, context) -> None:
        self.lm = load_files(context.artifacts["model"], context.artifacts["vocab"])

    def predict(
        self, context, model_input: list[str], params: dict[str, Any] | None = None
    ) -> list[float]:
        """Perplexity of each sentence (words and closing <eos>, from the zero state)."""
        try:
            rows, _, _ = score(self.lm, parse([str(t) for t in model_input], self.lm.vocab))
        except PtblmError as exc:  # an empty sentence, with its position
            raise mlflow.MlflowException.invalid_parameter_value(f"model_input: {exc}") from None
        return [r.perplexity for r in rows]


# MLflow wraps `predict` in a check that model_input matches the list[str] hint (and infers
# the signature from it); one sentence given as a bare string becomes a list before that.
_checked_predict = SentenceScorer.predict


@functools.wraps(_checked_predict)
def _one_or_many(self, context, model_input, params=None):
    return _checked_predict(
        self, context, [model_input] if isinstance(model_input, str) else model_input, params
    )


SentenceScorer.predict = _one_or_many
mlflow.models.set_model(SentenceScorer())
