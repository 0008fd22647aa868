"""A trained model logged into its MLflow run, as the pickle-free pyfunc of mlflow_model.py.

Apart from `tracking` so that the tracking layer never imports the using-models layer
(`mlflow_model` imports `api` and `score`): this module sits above both.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from . import tracking


def log_model(tracker: tracking.NullTracker, model_path: Path, vocab_path: Path) -> None:
    """The model as code (ptblm/mlflow_model.py, which scores sentences), its weights and
    vocabulary as artifacts, ptblm's source bundled: loading it unpickles nothing. Nothing
    without a tracking run."""
    if not isinstance(tracker, tracking.MlflowTracker):
        return
    import mlflow
    import torch

    from . import mlflow_model

    with tempfile.TemporaryDirectory() as tmp:
        code = Path(tmp) / "ptblm"  # the package without __pycache__ (no .pyc in the model)
        shutil.copytree(Path(__file__).parent, code, ignore=shutil.ignore_patterns("__pycache__"))
        tracker.retry(
            lambda: mlflow.pyfunc.log_model(
                name="model",
                python_model=mlflow_model.__file__,
                artifacts={"model": str(model_path), "vocab": str(vocab_path)},
                code_paths=[str(code)],
                input_example=list(mlflow_model.EXAMPLE),
                pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", "numpy", "pandas"],
            )
        )
