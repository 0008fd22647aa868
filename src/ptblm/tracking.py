"""Experiment tracking behind a small interface; mlflow is imported only when tracking is on.

`train` opens one MLflow run (or, after a kill, reopens the one its checkpoint names) and
writes its id to models/<config>/mlflow_run.json (a DVC out); `evaluate` adds its results
to that run, so one pipeline execution is one run in `mlflow ui`. An evaluation that runs
without training (only evaluate's params changed) gets a run of its own, nested under the
training run, so the training run's record is never rewritten.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

from .config import TrackingParams
from .errors import PtblmError
from .fsutil import write_json
from .workspace import project_root

# The MLflow UI lists a run's metrics sorted by name (`Array.sort()` in its bundle, code-unit
# order; "system/" ones in a section of their own). So the three perplexities keep their
# plain names and everything else lives under "x/", which sorts after them: test, train and
# valid perplexity come first in the runs table, the run page and the charts.
AUX = "x/"
EPOCH_METRICS = {  # record key -> metric, logged at step = epoch
    "train_perplexity": "train_perplexity",
    "valid_perplexity": "valid_perplexity",
    "lr": f"{AUX}lr",
    "words_per_sec": f"{AUX}words_per_sec",
    "epoch_time_s": f"{AUX}epoch_time_s",
}
TRAIN_SUMMARY = {  # TrainResult field -> metric, logged once
    "words_per_sec": f"{AUX}mean_words_per_sec",
    "wall_time_s": f"{AUX}train_wall_time_s",
}
EVAL_METRICS = {  # what `evaluate` adds
    "test_perplexity": "test_perplexity",
    "eval_valid_perplexity": f"{AUX}eval_valid_perplexity",
    "eval_words_per_sec": f"{AUX}eval_words_per_sec",
    "total_wall_time_s": f"{AUX}total_wall_time_s",
}
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")  # UI: runs, not traces
# MLflow 3.17's UI ignores that tag: a "GenAI / Model training" switch, kept per browser and
# GenAI at first, picks an empty traces overview or the runs; `workflowType` in the URL
# overrides it. Its runs table shows no metric columns until some are picked, but a URL
# with `viewStateShareKey=<key>` loads the view stored in the experiment tag
# `mlflow.sharedViewState.<key>`: this one shows the three perplexities.
UI_VIEW_KEY = "perplexities"
UI_VIEW_TAG = (
    f"mlflow.sharedViewState.{UI_VIEW_KEY}",
    json.dumps(
        {
            "selectedColumns": [
                "attributes.`Models`",
                "metrics.`test_perplexity`",
                "metrics.`test_perplexity_cache`",
                "metrics.`test_perplexity_dynamic`",
                "metrics.`valid_perplexity`",
                "metrics.`train_perplexity`",
            ]
        }
    ),
)
UI_QUERY = f"workflowType=machine_learning&viewStateShareKey={UI_VIEW_KEY}"
LOCAL_UI = "http://127.0.0.1:5000"  # where `mlflow ui` serves a local store
VERBOSE_ENV = "PTBLM_VERBOSE"
SYSTEM_METRICS_INTERVAL_S = 10.0
PROBE_TIMEOUT_S = 5.0
SQLITE_RETRIES = 8
PREVIOUS_RUN_TAG = "ptblm.previous_run_id"  # a rerun whose store lost the run it resumes
TRAINING_RUN_TAG = "ptblm.training_run_id"  # an evaluation run's training run
T = TypeVar("T")


class TrackingError(PtblmError):
    """The tracking store cannot be used; the message says how to fix or skip it."""


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


def quiet_mlflow() -> None:
    """No MLflow INFO lines (store creation, system metrics start/stop) and no artifact
    download bars, unless $PTBLM_VERBOSE (`ptblm --verbose`) asks for them. MLflow's own
    settings, so `mlflow models serve` and other subprocesses follow; a user's own values win.
    """
    if verbose():
        return
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    if "mlflow" in sys.modules:  # configured at import: set the level it read then
        logging.getLogger("mlflow").setLevel(os.environ["MLFLOW_LOGGING_LEVEL"])


def tracking_uri(settings: TrackingParams) -> str:
    """$MLFLOW_TRACKING_URI, then params tracking.uri, then sqlite mlflow.db at the root."""
    return (
        os.environ.get("MLFLOW_TRACKING_URI")
        or settings.uri
        or f"sqlite:///{project_root() / 'mlflow.db'}"
    )


def use_store(uri: str) -> None:
    """Point mlflow's fluent API at `uri`, leaving $MLFLOW_TRACKING_URI as the user set it.

    mlflow.set_tracking_uri also exports the variable, which would then override
    tracking.uri for every later store chosen in this process; mlflow reads its own global.
    """
    import mlflow

    user_uri = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    if user_uri is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = user_uri


def read_run_file(path: Path) -> dict[str, Any]:
    """The hand-off train wrote; a missing file means no tracked run (older outputs)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {"run_id": None}


class NullTracker:
    """Tracking switched off: every call does nothing, and mlflow is never imported."""

    run_id: str | None = None
    uri: str | None = None
    experiment: str | None = None
    experiment_id: str | None = None
    reopened = False  # logging into a run opened earlier (by a killed train, or by train)

    def log_epoch(self, record: dict[str, Any]) -> None:
        pass

    def log_missing_epochs(self, history: list[dict[str, Any]]) -> None:
        pass

    def log_params(self, params: dict[str, Any]) -> None:
        pass

    def set_tags(self, tags: dict[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        pass

    def log_artifacts(self, paths: list[Path]) -> None:
        pass

    def elapsed_s(self) -> float | None:
        return None

    def ui_url(self) -> str | None:
        return None

    def end(self, failed: bool = False, *, killed: bool = False) -> None:
        pass

    def write_run_file(self, path: Path) -> None:
        write_json(
            path, {"run_id": self.run_id, "tracking_uri": self.uri, "experiment": self.experiment}
        )


class MlflowTracker(NullTracker):
    """One MLflow run (opened or resumed), through the fluent API so system metrics work."""

    def __init__(
        self,
        uri: str,
        experiment: str,
        run_name: str,
        run_id: str | None = None,
        parent_run_id: str | None = None,
        tags: dict[str, str] | None = None,
        system_metrics: bool = False,
    ):
        quiet_mlflow()
        import mlflow

        self._mlflow = mlflow
        self.uri, self.experiment = uri, experiment
        self.reopened = run_id is not None
        use_store(uri)
        if system_metrics:
            mlflow.set_system_metrics_sampling_interval(SYSTEM_METRICS_INTERVAL_S)
        with _store_lock(uri):
            exp_id = self.retry(lambda: _experiment_id(mlflow, uri, experiment))
            run = self.retry(
                lambda: mlflow.start_run(
                    run_id=run_id,
                    experiment_id=None if run_id else exp_id,
                    run_name=None if run_id else run_name,
                    parent_run_id=parent_run_id,
                    tags=tags,
                    log_system_metrics=system_metrics,
                )
            )
        self.run_id = run.info.run_id
        self.experiment_id = run.info.experiment_id
        self._start_ms = run.info.start_time

    def retry(self, call: Callable[[], T]) -> T:
        """SQLite lets one writer in at a time; a concurrent run's write is waited out."""
        for attempt in range(SQLITE_RETRIES):
            try:
                return call()
            except Exception as exc:
                if "locked" not in str(exc) or attempt == SQLITE_RETRIES - 1:
                    raise
                time.sleep(0.2 * 2**attempt)
        raise AssertionError("unreachable")

    def log_epoch(self, record: dict[str, Any]) -> None:
        metrics = {name: float(record[key]) for key, name in EPOCH_METRICS.items()}
        self.log_metrics(metrics, step=int(record["epoch"]))

    def log_missing_epochs(self, history: list[dict[str, Any]]) -> None:
        """The epochs of `history` this run has no record of: a kill can land after an
        epoch's checkpoint was saved and before its metrics were logged."""
        client = self._mlflow.MlflowClient()
        logged = {
            m.step
            for m in self.retry(
                lambda: client.get_metric_history(self.run_id, EPOCH_METRICS["valid_perplexity"])
            )
        }
        for record in history:
            if int(record["epoch"]) not in logged:
                self.log_epoch(record)

    def log_params(self, params: dict[str, Any]) -> None:
        """A reopened run keeps its params: one that differs (the store's run belongs to
        other settings) is a one-line error, not MLflow's traceback."""
        from mlflow.exceptions import MlflowException

        try:
            self.retry(lambda: self._mlflow.log_params(params))
        except MlflowException as exc:
            first = str(exc).strip().splitlines()[0][:300]
            raise TrackingError(
                f"MLflow run {self.run_id} in {self.uri} cannot take these params ({first}); "
                "it belongs to other settings: delete its checkpoint (ptblm checkpoints) to "
                "start a new run"
            ) from None

    def set_tags(self, tags: dict[str, Any]) -> None:
        self.retry(lambda: self._mlflow.set_tags({k: str(v) for k, v in tags.items()}))

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.retry(lambda: self._mlflow.log_metrics(metrics, step=step))

    def log_artifacts(self, paths: list[Path]) -> None:
        for path in paths:
            self.retry(lambda p=path: self._mlflow.log_artifact(str(p)))

    def elapsed_s(self) -> float:
        return time.time() - self._start_ms / 1000

    def ui_url(self) -> str:
        """The experiment's runs table in the MLflow UI, with the perplexity columns: on the
        server, or under `mlflow ui` for a local store."""
        server = self.uri.startswith(("http://", "https://"))
        base = self.uri.rstrip("/") if server else LOCAL_UI
        return f"{base}/#/experiments/{self.experiment_id}/runs?{UI_QUERY}"

    def end(self, failed: bool = False, *, killed: bool = False) -> None:
        """FINISHED, FAILED, or KILLED (interrupted: SIGTERM, Ctrl-C); a rerun that resumes
        the run's checkpoint reopens it, whichever it was."""
        status = "KILLED" if killed else "FAILED" if failed else "FINISHED"
        self.retry(lambda: self._mlflow.end_run(status))


def sqlite_path(uri: str) -> Path | None:
    """The database file of a local SQLite store URI, None for any other store."""
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


def _experiment_id(mlflow, uri: str, name: str) -> str:
    """Get or create; a concurrent creator that wins the race is not an error.

    A local store keeps artifacts beside the database, not under the cwd of whichever
    process created the experiment: for a queued DVC run that is a temp copy, deleted after.
    """
    found = mlflow.get_experiment_by_name(name)
    if found is not None:
        for key, value in (EXPERIMENT_KIND, UI_VIEW_TAG):  # made by an older ptblm
            if found.tags.get(key) != value:
                mlflow.MlflowClient().set_experiment_tag(found.experiment_id, key, value)
        return found.experiment_id
    db = sqlite_path(uri)
    location = (db.parent / "mlruns" / name).as_uri() if db else None
    try:
        return mlflow.create_experiment(
            name, artifact_location=location, tags=dict([EXPERIMENT_KIND, UI_VIEW_TAG])
        )
    except Exception:
        found = mlflow.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


@contextlib.contextmanager
def _store_lock(uri: str) -> Iterator[None]:
    """Serialise opening a run on a local SQLite store: its first use creates the schema,
    which two processes must not do at once."""
    db = sqlite_path(uri)
    if db is None:
        yield
        return
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + "-lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _probe(uri: str) -> None:
    """Fail in seconds, not after mlflow's minutes of retries, when a server is down."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=PROBE_TIMEOUT_S):
            pass
    except (urllib.error.URLError, OSError) as exc:
        raise TrackingError(f"tracking server {uri} is unreachable ({exc})") from None


def open_tracker(
    settings: TrackingParams,
    run_name: str,
    previous_run_id: str | None = None,
) -> NullTracker:
    """The training run: `previous_run_id`'s run reopened if the store still has it (a rerun
    after a kill goes on in the same run), else a new one (tagged with the old id). A store
    that cannot be used is, per tracking.on_unreachable, an error before any work or no
    tracking."""
    uri = tracking_uri(settings)
    try:
        _probe(uri)
        system = settings.system_metrics
        if previous_run_id and _find_run(uri, previous_run_id) is not None:
            return MlflowTracker(
                uri, settings.experiment, run_name, run_id=previous_run_id, system_metrics=system
            )
        tags = {PREVIOUS_RUN_TAG: previous_run_id} if previous_run_id else None
        return MlflowTracker(uri, settings.experiment, run_name, tags=tags, system_metrics=system)
    except Exception as exc:
        message = (
            f"MLflow tracking store {uri} cannot be used: {exc}. Start it or fix "
            "MLFLOW_TRACKING_URI / tracking.uri, set tracking.on_unreachable: continue to "
            "train untracked, or pass --no-tracking"
        )
        if settings.on_unreachable == "fail":
            raise TrackingError(message) from None
        warn(f"{message}; continuing without tracking")
        return NullTracker()


def open_evaluation(
    run_file: Path,
    run_name: str,
    params: dict[str, Any],
    tags: dict[str, str],
    system_metrics: bool = False,
) -> NullTracker:
    """Where `evaluate` logs: the training run train handed over, if this evaluation belongs
    to it (the run has no test score yet, and was trained for these evaluate params); else a
    run of its own, nested under the training run. No tracking (with a warning) when the run
    file's store or run is gone, e.g. a run file pulled from another machine."""
    reached = _training_run(run_file, "evaluating")
    if reached is None:
        return NullTracker()
    run, found = reached
    uri = run["tracking_uri"]
    logged = found.data.params
    own = "test_perplexity" not in found.data.metrics and all(
        logged.get(k) in (None, str(v)) for k, v in params.items()
    )
    if own:
        tracker = MlflowTracker(
            uri, run["experiment"], "", run_id=run["run_id"], system_metrics=system_metrics
        )
    else:
        tracker = MlflowTracker(
            uri,
            run["experiment"],
            run_name,
            parent_run_id=run["run_id"],
            tags={**tags, TRAINING_RUN_TAG: run["run_id"]},
            system_metrics=system_metrics,
        )
    tracker.log_params(params)
    return tracker


def open_adaptation(run_file: Path) -> NullTracker:
    """Where `adapt` logs: the training run itself, beside its test_perplexity (a rerun
    overwrites the adapted figures); no tracking, with a warning, if it cannot be reached."""
    reached = _training_run(run_file, "adapting")
    if reached is None:
        return NullTracker()
    run, _ = reached
    return MlflowTracker(run["tracking_uri"], run["experiment"], "", run_id=run["run_id"])


def _training_run(run_file: Path, doing: str) -> tuple[dict[str, Any], Any] | None:
    """The run train handed over in `run_file` and MLflow's record of it; None (with a
    warning) when there is none or its store or run is gone, e.g. a run file pulled from
    another machine."""
    run = read_run_file(run_file)
    if not run.get("run_id"):
        return None
    uri = run["tracking_uri"]
    db = sqlite_path(uri)
    try:
        if db is not None and not db.is_file():
            raise TrackingError(f"no MLflow store at {db}")
        _probe(uri)
        found = _find_run(uri, run["run_id"])
        if found is None:
            raise TrackingError(f"the store has no run {run['run_id']}")
    except Exception as exc:
        warn(
            f"the training run in {run_file} cannot be reached ({exc}); {doing} without "
            "tracking (retrain here, or point tracking.uri / MLFLOW_TRACKING_URI at its store)"
        )
        return None
    return run, found


def _find_run(uri: str, run_id: str):
    """The run with this id in the store at `uri`, None if it has none."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        return MlflowClient(tracking_uri=uri).get_run(run_id)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def run_name(config_name: str) -> str:
    """The DVC experiment's name under `dvc exp run`, else config + UTC timestamp."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return os.environ.get("DVC_EXP_NAME") or f"{config_name}-{stamp}"


def run_tags(config_name: str, device_type: str, device_name: str) -> dict[str, str]:
    """What tells runs apart in the UI besides params: code, data baseline, hardware."""
    import torch

    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    tags = {
        "config": config_name,
        "git_commit": commit,
        "device": device_type,
        "device_name": device_name,
        "torch_version": torch.__version__,
    }
    if os.environ.get("DVC_EXP_BASELINE_REV"):
        tags["dvc_baseline_rev"] = os.environ["DVC_EXP_BASELINE_REV"]
    if os.environ.get("DVC_EXP_NAME"):
        tags["dvc_exp_name"] = os.environ["DVC_EXP_NAME"]
    return tags
