"""Experiment tracking behind a small interface; mlflow is imported only when tracking is on."""

from __future__ import annotations

from pathlib import Path
from typing import Any


class NullTracker:
    """Tracking switched off: every call does nothing, and mlflow is never imported."""

    run_id: str | None = None

    def log_epoch(self, record: dict[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float]) -> None:
        pass

    def log_artifacts(self, paths: list[Path]) -> None:
        pass

    def end(self, failed: bool = False) -> None:
        pass
