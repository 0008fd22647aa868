"""Typed, validated view of params.yaml.

Every check happens here, before any work starts, so that a bad value fails in
milliseconds with one line naming the key and what it may be.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import PtblmError

DEFAULT_PARAMS = Path("params.yaml")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("fp32", "tf32", "bf16")
UNREACHABLE_POLICIES = ("fail", "continue")
CELLS = ("lstm", "gru")
DROPOUTS = ("standard", "variational")
LR_SCHEDULES = ("epoch", "plateau")
DYNAMIC_RULES = ("rms", "sgd")


class ConfigError(PtblmError):
    """A params value that cannot work; the message says which key and how to fix it."""


@dataclass(frozen=True)
class ModelConfig:
    """One row of the Zaremba et al. config table (docs/reproduction.md, 'The configs'),
    plus the variants beyond it (same file, 'Beyond the 2014 model').

    The variant keys default to the 2014 model, so a model file written before they
    existed (it lacks them) still loads as the model it is.
    """

    init_scale: float
    learning_rate: float
    max_grad_norm: float
    num_layers: int
    num_steps: int
    hidden_size: int
    max_epoch: int
    max_max_epoch: int
    keep_prob: float
    lr_decay: float
    batch_size: int
    vocab_size: int
    cell: str = "lstm"  # lstm | gru
    tie_weights: bool = False  # the softmax weight is the embedding's transpose (one tensor)
    dropout: str = "standard"  # standard (per element) | variational (one mask per sequence)
    lr_schedule: str = "epoch"  # epoch (the tutorial's) | plateau (pytorch/examples')

    def check(self, where: str) -> None:
        for name in ("num_layers", "num_steps", "hidden_size", "batch_size", "vocab_size"):
            _require(getattr(self, name) >= 1, f"{where}.{name}", getattr(self, name), ">= 1")
        _require(self.max_epoch >= 0, f"{where}.max_epoch", self.max_epoch, ">= 0")
        _require(self.max_max_epoch >= 1, f"{where}.max_max_epoch", self.max_max_epoch, ">= 1")
        for name in ("init_scale", "learning_rate", "max_grad_norm", "lr_decay"):
            _require(getattr(self, name) > 0, f"{where}.{name}", getattr(self, name), "> 0")
        _require(0 < self.keep_prob <= 1, f"{where}.keep_prob", self.keep_prob, "in (0, 1]")
        _require_choice(self.cell, f"{where}.cell", CELLS)
        _require_choice(self.dropout, f"{where}.dropout", DROPOUTS)
        _require_choice(self.lr_schedule, f"{where}.lr_schedule", LR_SCHEDULES)
        if self.lr_schedule == "plateau":
            allowed = "< 1 with lr_schedule plateau"
            _require(self.lr_decay < 1, f"{where}.lr_decay", self.lr_decay, allowed)


@dataclass(frozen=True)
class DataParams:
    """Where `fetch` gets the archive from: `sources` (archives) in order after
    $PTBLM_DATA_SOURCE, then `file_sources` (base URLs serving the three text files)."""

    sources: tuple[str, ...]
    file_sources: tuple[str, ...] = ()
    timeout_s: float = 60.0
    retries: int = 3
    backoff_s: float = 2.0

    def check(self, where: str) -> None:
        _require(len(self.sources) > 0, f"{where}.sources", list(self.sources), "a non-empty list")
        for i, base in enumerate(self.file_sources):
            _require(bool(base.strip()), f"{where}.file_sources[{i}]", base, "a URL or folder")
        _require(self.timeout_s > 0, f"{where}.timeout_s", self.timeout_s, "> 0")
        _require(self.retries >= 1, f"{where}.retries", self.retries, ">= 1")
        _require(self.backoff_s >= 0, f"{where}.backoff_s", self.backoff_s, ">= 0")


@dataclass(frozen=True)
class TrainParams:
    """Settings shared by every config; `SETTINGS` below says which change the result."""

    seed: int = 1234
    device: str = "auto"
    precision: str = "fp32"
    num_threads: int = 0
    cuda_graphs: bool = True
    gpu_wait_s: float = 86400.0  # how long to wait for a GPU no other ptblm process holds
    nproc_per_node: int = 1  # > 1: the train stage runs torchrun with this many processes
    max_restarts: int = 0  # torchrun --max-restarts: a failed rank restarts the group

    def check(self, where: str) -> None:
        _require_choice(self.device, f"{where}.device", DEVICES)
        _require_choice(self.precision, f"{where}.precision", PRECISIONS)
        _require(self.num_threads >= 0, f"{where}.num_threads", self.num_threads, ">= 0 (0: auto)")
        _require(self.gpu_wait_s >= 0, f"{where}.gpu_wait_s", self.gpu_wait_s, ">= 0")
        _require(self.nproc_per_node >= 1, f"{where}.nproc_per_node", self.nproc_per_node, ">= 1")
        _require(self.max_restarts >= 0, f"{where}.max_restarts", self.max_restarts, ">= 0")


@dataclass(frozen=True)
class EvalParams:
    """Test evaluation: the tutorial scores the test split at batch size 1."""

    batch_size: int = 1

    def check(self, where: str) -> None:
        _require(self.batch_size >= 1, f"{where}.batch_size", self.batch_size, ">= 1")


@dataclass(frozen=True)
class TrackingParams:
    """MLflow settings; `uri` empty means the SQLite store mlflow.db at the project root."""

    enabled: bool = True
    experiment: str = "ptb-lm"
    uri: str = ""
    on_unreachable: str = "fail"
    system_metrics: bool = False  # CPU, memory, GPU use as system/* metrics, every 10 s

    def check(self, where: str) -> None:
        _require(bool(self.experiment), f"{where}.experiment", self.experiment, "a non-empty name")
        _require_choice(self.on_unreachable, f"{where}.on_unreachable", UNREACHABLE_POLICIES)


@dataclass(frozen=True)
class CacheParams:
    """The neural cache's grid (stage adapt): every combination is scored on valid."""

    window: tuple[int, ...] = (500,)  # past positions the cache holds
    theta: tuple[float, ...] = (0.3,)  # sharpness of the match between hidden states
    weight: tuple[float, ...] = (0.1,)  # lambda: the cache's share of the mixture

    def check(self, where: str) -> None:
        _require_grid(self.window, f"{where}.window", lambda v: v >= 1, ">= 1")
        _require_grid(self.theta, f"{where}.theta", lambda v: v >= 0, ">= 0")
        _require_grid(self.weight, f"{where}.weight", lambda v: 0 <= v <= 1, "in [0, 1]")


@dataclass(frozen=True)
class DynamicParams:
    """Dynamic evaluation's rule and grid (stage adapt)."""

    rule: str = "rms"  # rms (Krause et al. 2018) | sgd (plain SGD, decay to the trained weights)
    segment: int = 5  # tokens scored, then learned from, per update
    epsilon: float = 1e-3  # rms: added to the gradient's RMS
    gradient_tokens: int = 0  # rms: the RMS over this many training tokens (0: all of them)
    learning_rate: tuple[float, ...] = (5e-5,)
    decay: tuple[float, ...] = (2e-3,)  # lambda: pull toward the trained weights

    def check(self, where: str) -> None:
        _require_choice(self.rule, f"{where}.rule", DYNAMIC_RULES)
        _require(self.segment >= 1, f"{where}.segment", self.segment, ">= 1")
        _require(self.epsilon > 0, f"{where}.epsilon", self.epsilon, "> 0")
        _require(self.gradient_tokens >= 0, f"{where}.gradient_tokens", self.gradient_tokens,
                 ">= 0 (0: the whole training split)")  # fmt: skip
        _require_grid(self.learning_rate, f"{where}.learning_rate", lambda v: v >= 0, ">= 0")
        _require_grid(self.decay, f"{where}.decay", lambda v: 0 <= v <= 1, "in [0, 1]")


@dataclass(frozen=True)
class AdaptParams:
    """Test-time adaptation (stage adapt), tuned on the valid split only."""

    cache: CacheParams = field(default_factory=CacheParams)
    dynamic: DynamicParams = field(default_factory=DynamicParams)


@dataclass(frozen=True)
class Params:
    model: str
    models: dict[str, ModelConfig]
    data: DataParams
    train: TrainParams = field(default_factory=TrainParams)
    evaluate: EvalParams = field(default_factory=EvalParams)
    tracking: TrackingParams = field(default_factory=TrackingParams)
    adapt: AdaptParams = field(default_factory=AdaptParams)

    def __post_init__(self) -> None:
        require_batch_splits(self.model, self.config.batch_size, self.train.nproc_per_node)

    @property
    def config(self) -> ModelConfig:
        return self.models[self.model]

    def with_model(self, name: str) -> Params:
        _require_choice(name, "model", tuple(self.models))
        return dataclasses.replace(self, model=name)


@dataclass(frozen=True)
class Setting:
    """One params.yaml key, classified once: the stages whose result it changes.

    A *result* key (`stages` not empty) changes what a stage computes beyond float rounding:
    it is one of those stages' DVC params deps, part of the training checkpoint's identity and
    an MLflow param. An *operational* key (`stages` empty) says only where and how fast: DVC
    ignores it, a checkpoint resumes across a change of it, and MLflow records it as a tag
    that a resumed run updates (`resumed_with.<key>`).
    """

    key: str  # `models.${model}`: every hyperparameter of the selected config
    stages: tuple[str, ...]
    why: str

    @property
    def result(self) -> bool:
        return bool(self.stages)


SETTINGS = (
    Setting("model", ("train", "evaluate"), "which config is trained and scored"),
    Setting("models.${model}", ("train",), "the config's hyperparameters and variant switches"),
    Setting("train.seed", ("train",), "the initial weights and every dropout mask"),
    Setting("train.precision", ("train", "evaluate"), "the arithmetic: TF32 or bf16 rounding"),
    Setting(
        "train.nproc_per_node",
        ("train",),
        "each process draws its own dropout masks; the gradient is reduced over them",
    ),
    Setting("evaluate.batch_size", ("evaluate",), "how many rows the test split is cut into"),
    Setting("train.device", (), "CPU or CUDA (on CUDA cuDNN draws the between-layer masks)"),
    Setting("train.num_threads", (), "CPU threads: the same sums, faster or slower"),
    Setting("train.cuda_graphs", (), "how a step's kernels are launched, not what they compute"),
    Setting("train.gpu_wait_s", (), "how long to wait for a free GPU"),
    Setting("train.max_restarts", (), "how often torchrun restarts a failed group"),
)


OPERATIONAL_KEYS = tuple(s.key for s in SETTINGS if not s.result)


def stage_params(stage: str) -> list[str]:
    """The params.yaml keys whose change reruns `stage` (its params deps in dvc.yaml)."""
    return [s.key for s in SETTINGS if stage in s.stages]


def training_result(config_name: str, config: ModelConfig, train: TrainParams) -> dict[str, Any]:
    """The values of the keys that change a trained model, flat: what a checkpoint must
    match to be resumed, what MLflow records as params, what the check stage hands train."""
    values: dict[str, Any] = {}
    for setting in SETTINGS:
        if "train" not in setting.stages:
            continue
        if setting.key == "model":
            values["config"] = config_name
        elif setting.key == "models.${model}":
            values.update(dataclasses.asdict(config))
        else:
            values[setting.key] = getattr(train, setting.key.removeprefix("train."))
    return values


def operational(train: TrainParams) -> dict[str, Any]:
    """The train settings that change only where and how fast a run computes."""
    return {
        s.key: getattr(train, s.key.removeprefix("train."))
        for s in SETTINGS
        if not s.result and s.key.startswith("train.")
    }


def require_batch_splits(config_name: str, batch_size: int, processes: int) -> None:
    """Each process of a distributed run owns batch_size / processes rows of the batch."""
    if batch_size % processes:
        raise ConfigError(
            f"params: models.{config_name}.batch_size = {batch_size} does not split over "
            f"{processes} processes (train.nproc_per_node x nodes); use a process count "
            f"that divides {batch_size}"
        )


def _require(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"params: {key} = {value!r} is not allowed; it must be {allowed}")


def _require_choice(value: Any, key: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(
            f"params: {key} = {value!r} is not allowed; choose one of: {', '.join(choices)}"
        )


def _require_grid(values: tuple, key: str, ok: Callable[[Any], bool], allowed: str) -> None:
    """A grid: at least one value, each allowed."""
    if not values:
        raise ConfigError(f"params: {key} is empty; give at least one value")
    for value in values:
        _require(ok(value), key, value, allowed)


def _coerce(value: Any, kind: str, key: str) -> Any:
    """Turn a YAML value into the field's declared type (a string: annotations are lazy)."""
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"params: {key} = {value!r} must be a number")
        if not math.isfinite(value):
            raise ConfigError(f"params: {key} = {value!r} must be a finite number")
        return float(value)
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"params: {key} = {value!r} must be a whole number")
        return value
    if kind == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"params: {key} = {value!r} must be true or false")
        return value
    if kind == "str":
        if not isinstance(value, str):
            raise ConfigError(f"params: {key} = {value!r} must be a string")
        return value
    if kind == "tuple[str, ...]":
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"params: {key} = {value!r} must be a list of strings")
        return tuple(value)
    if kind in ("tuple[int, ...]", "tuple[float, ...]"):  # a grid: one value or a list
        values = value if isinstance(value, list) else [value]
        return tuple(_coerce(v, kind[6:-6], key) for v in values)
    raise TypeError(f"unsupported field type {kind!r}")  # a programming error, not user input


def _build(cls: type, raw: Any, where: str, required: bool = True) -> Any:
    """Build a params dataclass from a YAML mapping: unknown or missing keys are errors."""
    if raw is None and not required:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"params: {where} must be a mapping of keys to values")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(
            f"params: {where}.{unknown[0]} is not a known key; known keys: {', '.join(fields)}"
        )
    values = {}
    for name, f in fields.items():
        if name in raw:
            values[name] = _coerce(raw[name], f.type, f"{where}.{name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"params: {where}.{name} is missing; add it to params.yaml")
    obj = cls(**values)
    obj.check(where)
    return obj


def parse_params(raw: Any) -> Params:
    """Validate a params.yaml mapping (already loaded) into `Params`."""
    if not isinstance(raw, dict):
        raise ConfigError("params: the file must be a YAML mapping with keys model, models, data")
    for key in ("model", "models", "data"):
        if key not in raw:
            raise ConfigError(f"params: {key} is missing; add it to params.yaml")
    known = {"model", "models", "data", "train", "evaluate", "tracking", "adapt"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(
            f"params: {unknown[0]} is not a known key; known keys: {', '.join(sorted(known))}"
        )
    if not isinstance(raw["models"], dict) or not raw["models"]:
        raise ConfigError("params: models must map config names to their hyperparameters")
    models = {
        str(name): _build(ModelConfig, values, f"models.{name}")
        for name, values in raw["models"].items()
    }
    if not isinstance(raw["model"], str) or raw["model"] not in models:
        raise ConfigError(
            f"params: model = {raw['model']!r} is not a config; choose one of: {', '.join(models)}"
        )
    return Params(
        model=raw["model"],
        models=models,
        data=_build(DataParams, raw["data"], "data"),
        train=_build(TrainParams, raw.get("train"), "train", required=False),
        evaluate=_build(EvalParams, raw.get("evaluate"), "evaluate", required=False),
        tracking=_build(TrackingParams, raw.get("tracking"), "tracking", required=False),
        adapt=_build_adapt(raw.get("adapt")),
    )


def _build_adapt(raw: Any) -> AdaptParams:
    """The adapt section: two sub-sections, each optional."""
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise ConfigError("params: adapt must be a mapping with keys cache, dynamic")
    unknown = sorted(set(raw) - {"cache", "dynamic"})
    if unknown:
        raise ConfigError(
            f"params: adapt.{unknown[0]} is not a known key; known keys: cache, dynamic"
        )
    return AdaptParams(
        cache=_build(CacheParams, raw.get("cache"), "adapt.cache", required=False),
        dynamic=_build(DynamicParams, raw.get("dynamic"), "adapt.dynamic", required=False),
    )


def load_params(path: Path = DEFAULT_PARAMS, model: str | None = None) -> Params:
    """Read and validate params.yaml; `model`, if given, selects another config than its own."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"params: {path} not found; run from the project root or pass --params"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigError(f"params: cannot read {path} ({reason}); pass a YAML file") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"params: {path} is not valid YAML{line}; fix the syntax") from None
    if raw is None:
        raise ConfigError(
            f"params: {path} is empty; it must set model, models and data "
            f"(`git checkout {path}` restores the committed one)"
        )
    params = parse_params(raw)
    return params.with_model(model) if model else params
