"""Where a project's lasting state lives: the MLflow store and the training checkpoints.

DVC runs a queued experiment in a temporary copy of the repository and deletes the copy
afterwards, whatever became of the run; it points $DVC_ROOT at the parent repository for
every stage it runs, queued or not. State kept there outlives the copy: a queued run that
died resumes when queued again or run in the workspace, and every run logs to one store.
"""

from __future__ import annotations

import os
from pathlib import Path


def project_root() -> Path:
    """$DVC_ROOT under DVC (the parent repo, for queued experiments too), else the cwd."""
    return Path(os.environ.get("DVC_ROOT") or os.getcwd()).resolve()
