"""Shared fixtures: temporary DVC projects made from this checkout, run by the real `dvc`."""

from __future__ import annotations

import functools
import io
import os
import random
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from ptblm.config import ModelConfig

# Test models are tiny, and tests run on every core at once (pytest-xdist): one thread each,
# here and in every process a test starts (OpenMP's spin-waits make an oversubscribed
# training many times slower). train.num_threads, where a test sets it, still wins.
torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED_ARCHIVE = Path(
    os.environ.get(
        "PTBLM_TEST_ARCHIVE", PROJECT_ROOT.parent / "shared" / "data" / "simple-examples.tgz"
    )
).resolve()
# What a fresh clone has that a pipeline run needs (data, models, stores are made by the run);
# params.yaml comes from HEAD (committed_text), the code from the working copy.
PROJECT_FILES = ("dvc.yaml", ".dvcignore", ".gitignore", "pyproject.toml")
PROJECT_DIRS = ("stages", "src", ".dvc")


@functools.cache
def committed_text(path: str) -> str:
    """A file of the project's state (params.yaml, metrics/, plots/, dvc.lock) as HEAD has it.
    Tests never read the working copy's: the README's own `dvc exp run -S model=test` leaves
    `model: test`, new metrics and a new lock there. Outside a git checkout (an unpacked
    sdist), the file itself."""
    done = subprocess.run(
        ["git", "show", f"HEAD:{path}"], cwd=PROJECT_ROOT, capture_output=True, text=True
    )
    if done.returncode == 0:
        return done.stdout
    inside = subprocess.run(
        ["git", "rev-parse", "--is-inside-work-tree"], cwd=PROJECT_ROOT, capture_output=True
    )
    if inside.returncode == 0:  # a checkout without the file committed: say so
        raise FileNotFoundError(f"{path} is not in HEAD: {done.stderr.strip()}")
    return (PROJECT_ROOT / path).read_text(encoding="utf-8")


def committed_params() -> dict:
    """HEAD's params.yaml, parsed (a fresh copy each call, to change)."""
    return yaml.safe_load(committed_text("params.yaml"))


def committed_params_file(folder: Path) -> Path:
    """HEAD's params.yaml, written to folder/params.yaml, for commands that take --params."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "params.yaml"
    path.write_text(committed_text("params.yaml"), encoding="utf-8")
    return path


def committed_tree(folder: str, dest: Path) -> None:
    """HEAD's `folder` (metrics/, plots/, timings/) unpacked under dest."""
    archive = subprocess.run(
        ["git", "archive", "--format=tar", "HEAD", folder],
        cwd=PROJECT_ROOT,
        capture_output=True,
        check=True,
    )
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(dest, filter="data")


def tool_env(repo: Path | None = None, **extra: str) -> dict[str, str]:
    """Environment for subprocesses: this interpreter's bin first (so `python` in dvc.yaml is
    ours), the repo's own src on PYTHONPATH, no inherited tracking URI."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("PTBLM_DATA_SOURCE", None)
    if repo is not None:
        env["PYTHONPATH"] = str(repo / "src")
    env.update(extra)
    return env


def run(
    args: list[str],
    cwd: Path,
    env: dict[str, str] | None = None,
    check: bool = True,
    timeout: float = 900,
) -> subprocess.CompletedProcess:
    # a session of its own, so a timeout kills what it started too (dvc's stage commands)
    with subprocess.Popen(
        args,
        cwd=cwd,
        env=env or tool_env(cwd),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    ) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise
    result = subprocess.CompletedProcess(args, proc.returncode, stdout, stderr)
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(args)} exited {result.returncode}\n--- stdout\n{result.stdout[-4000:]}"
            f"\n--- stderr\n{result.stderr[-4000:]}"
        )
    return result


def wait_for_epoch(proc: subprocess.Popen, folder: Path, epoch: int = 2) -> Path:
    """Wait until a checkpoint in `folder` (checkpoints/<config>/) holds `epoch` finished
    epochs; return it. Read only when it changes: the training must keep the cores."""
    deadline, seen = time.monotonic() + 300, {}
    while time.monotonic() < deadline and proc.poll() is None:
        for checkpoint in folder.glob("*.pt"):
            stamp = checkpoint.stat().st_mtime_ns
            if seen.get(checkpoint) != stamp:
                seen[checkpoint] = stamp
                if torch.load(checkpoint, weights_only=True)["epoch"] >= epoch:
                    return checkpoint
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed; make epochs longer"
    raise AssertionError(f"no checkpoint of epoch {epoch} in {folder} within 300 s")


def kill_after_epoch(cmd: list[str], cwd: Path, folder: Path, epoch: int = 2) -> Path:
    """Start `cmd`, wait until its checkpoint in `folder` holds `epoch` finished epochs, then
    kill -9 it; returns the checkpoint."""
    proc = subprocess.Popen(
        cmd, cwd=cwd, env=tool_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    checkpoint = wait_for_epoch(proc, folder, epoch)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    return checkpoint


def dvc(
    repo: Path,
    *args: str,
    env: dict[str, str] | None = None,
    check: bool = True,
    timeout: float = 900,
) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "dvc", *args], repo, env=env, check=check, timeout=timeout)


def git(repo: Path, *args: str) -> str:
    return run(["git", *args], repo).stdout


def init_repo(repo: Path, message: str) -> None:
    """git init `repo` and commit everything in it, with a test identity."""
    git(repo, "init", "-q", "-b", "main")
    git(repo, "config", "user.email", "tests@ptb-lm.invalid")
    git(repo, "config", "user.name", "ptb-lm tests")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", message)


def make_project(parent: Path) -> Path:
    """A fresh git + DVC project with this checkout's pipeline and code, one commit deep."""
    repo = parent / "project"
    repo.mkdir()
    for name in PROJECT_FILES:
        shutil.copy2(PROJECT_ROOT / name, repo / name)
    (repo / "params.yaml").write_text(quick_adapt(committed_text("params.yaml")), encoding="utf-8")
    for name in PROJECT_DIRS:
        shutil.copytree(
            PROJECT_ROOT / name,
            repo / name,
            ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "tmp", "cache"),
        )
    init_repo(repo, "project under test")
    return repo


def quick_adapt(params_text: str) -> str:
    """params.yaml with dynamic evaluation tuned on one grid point in segments of 35, its
    gradient RMS over 20,000 training tokens, two cache windows: the adapt stage in seconds
    on the real PTB, not minutes, for tests that run the pipeline for something else
    (test_adapt runs the stage's grids). Comments and order kept."""
    from ruamel.yaml import YAML

    yaml_rt = YAML()
    params = yaml_rt.load(params_text)
    dynamic = params["adapt"]["dynamic"]
    dynamic["learning_rate"], dynamic["decay"], dynamic["segment"] = 1e-4, 2e-3, 35
    dynamic["gradient_tokens"] = 20_000
    params["adapt"]["cache"]["window"] = [100, 500]
    out = io.StringIO()
    yaml_rt.dump(params, out)
    return out.getvalue()


def write_texts(folder: Path, train_tokens: int = 4000, seed: int = 0) -> Path:
    """ptb.{train,valid,test}.txt with learnable structure (a noisy cycle of 30 words), so
    perplexity falls: a corpus that trains in a fraction of a second an epoch."""
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(30)]

    def text(n: int) -> str:
        out, i = [], 0
        for _ in range(n):
            i = (i + 1) % len(words) if rng.random() < 0.8 else rng.randrange(len(words))
            out.append(words[i] + (" \n " if rng.random() < 0.1 else " "))
        return "".join(out)

    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", train_tokens), ("valid", 800), ("test", 800)):
        (folder / f"ptb.{split}.txt").write_text(text(n), encoding="utf-8")
    return folder


# A config that trains an epoch of the synthetic corpus in well under a second; dropout on,
# so resuming must restore the RNG streams too.
TINY_CONFIG = {
    "init_scale": 0.1, "learning_rate": 1.0, "max_grad_norm": 5.0, "num_layers": 2,
    "num_steps": 10, "hidden_size": 16, "max_epoch": 2, "max_max_epoch": 3, "keep_prob": 0.8,
    "lr_decay": 0.5, "batch_size": 10, "vocab_size": 40, "cell": "lstm", "tie_weights": False,
    "dropout": "standard", "lr_schedule": "epoch",
}  # fmt: skip


def write_corpus(root: Path, train_tokens: int = 4000, seed: int = 0) -> Path:
    """The synthetic corpus's texts under root/text, prepared into root/data/prepared."""
    from ptblm.data import prepare

    texts = write_texts(root / "text", train_tokens, seed)
    prepare(texts, root / "data" / "prepared")
    return root / "data" / "prepared"


def tiny_params(epochs: int, **changes: Any) -> dict:
    """HEAD's params.yaml selecting config `tiny` (TINY_CONFIG with `changes`), on the CPU,
    one thread."""
    params = committed_params()
    params.update(model="tiny")
    params["models"]["tiny"] = {**TINY_CONFIG, "max_max_epoch": epochs, **changes}
    params["train"].update(device="cpu", num_threads=1)
    return params


def tiny_workdir(root: Path, epochs: int, **changes: Any) -> Path:
    """A folder to run the stages' commands in (no git, no DVC): the synthetic corpus
    prepared, and params.yaml selecting `tiny`."""
    write_corpus(root, train_tokens=20_000)
    (root / "params.yaml").write_text(yaml.safe_dump(tiny_params(epochs, **changes)))
    return root


# The model and step tests' config: a few hundred weights, one window of math in microseconds.
UNIT_CONFIG = ModelConfig(
    init_scale=0.1, learning_rate=1.0, max_grad_norm=5.0, num_layers=2, num_steps=5,
    hidden_size=8, max_epoch=4, max_max_epoch=13, keep_prob=1.0, lr_decay=0.5,
    batch_size=3, vocab_size=30,
)  # fmt: skip


def make_tiny_project(parent: Path, epochs: int, train_tokens: int = 20_000) -> Path:
    """A git + DVC project of this checkout's pipeline, selecting config `tiny` on a synthetic
    corpus, with fetch, extract and prepare done and locked (dvc commit: real DVC state, as
    after a first `dvc repro`), so `dvc exp run` runs check, train and evaluate in seconds."""
    repo = make_project(parent)
    (repo / "params.yaml").write_text(yaml.safe_dump(tiny_params(epochs), sort_keys=False))
    texts = write_texts(repo / "data" / "ptb", train_tokens)
    raw = repo / "data" / "raw" / "simple-examples.tgz"
    raw.parent.mkdir(parents=True)
    with tarfile.open(raw, "w:gz") as archive:
        archive.add(texts, arcname="simple-examples/data")
    env = tool_env(repo)
    dvc(repo, "commit", "--force", "fetch", "extract", env=env)
    dvc(repo, "repro", "prepare", env=env)
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "tiny corpus prepared")
    return repo


def copy_project(template: Path, parent: Path) -> Path:
    """A copy of a prepared project (git, DVC cache and all), to change and run on its own."""
    repo = parent / template.name
    shutil.copytree(template, repo, symlinks=True)
    return repo


@pytest.fixture(scope="session")
def tiny_template(tmp_path_factory) -> Path:
    """One prepared tiny project for the session (5 epochs); tests change copies of it."""
    return make_tiny_project(tmp_path_factory.mktemp("tiny-template"), epochs=5)


@pytest.fixture(autouse=True)
def no_inherited_tracking_uri(monkeypatch):
    """mlflow.set_tracking_uri() exports $MLFLOW_TRACKING_URI: keep one test's store out of
    the next one's."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return make_project(tmp_path)


@pytest.fixture(scope="session")
def shared_archive() -> Path:
    if not SHARED_ARCHIVE.is_file():
        pytest.fail(
            f"the shared PTB archive is missing at {SHARED_ARCHIVE}; set PTBLM_TEST_ARCHIVE"
        )
    return SHARED_ARCHIVE


def trained_perplexities(device: torch.device, precision: str) -> tuple[float, float]:
    """Valid perplexity of a model trained ~370 fp32 steps on a learnable synthetic stream,
    scored in fp32 and in `precision`. Trained first: an untrained model scores ~vocab size
    whatever the arithmetic, so only a trained one shows a broken fast path."""
    from ptblm.config import ModelConfig
    from ptblm.data import batchify
    from ptblm.device import set_precision
    from ptblm.epoch import score_epoch, train_epoch
    from ptblm.model import PTBModel
    from ptblm.step import TrainStep

    config = ModelConfig(
        init_scale=0.1, learning_rate=1.0, max_grad_norm=5.0, num_layers=2, num_steps=20,
        hidden_size=64, max_epoch=4, max_max_epoch=13, keep_prob=1.0, lr_decay=0.5,
        batch_size=20, vocab_size=200,
    )  # fmt: skip
    gen = torch.Generator().manual_seed(0)
    # a noisy cycle: the next word is the last one plus 1, 7 times in 8
    jumps = torch.where(torch.rand(60_000, generator=gen) < 7 / 8, 1, 0)
    jumps += (jumps == 0) * torch.randint(0, config.vocab_size, (60_000,), generator=gen)
    ids = jumps.cumsum(0) % config.vocab_size
    train_data = batchify(ids[:50_000], config.batch_size).to(device)
    valid_data = batchify(ids[50_000:], config.batch_size).to(device)
    set_precision("fp32", device)
    torch.manual_seed(0)
    model = PTBModel(config).to(device)
    step = TrainStep(model, "fp32")
    for _ in range(3):  # 124 windows an epoch
        train_epoch(model, train_data, config.num_steps, step)
    fp32 = score_epoch(model, valid_data, config.num_steps).perplexity
    set_precision(precision, device)
    try:
        fast = score_epoch(model, valid_data, config.num_steps, precision).perplexity
    finally:
        set_precision("fp32", device)
    return fp32, fast
