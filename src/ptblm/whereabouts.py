"""Where a trained model is when it is not in the workspace, and the one command that brings it
back; and restoring what DVC removed when `model` changed.

`dvc exp run -S model=<other>` checks the new selection out before it runs anything: every
cached output of the old selection (`models/<config>/model.pt`, its `mlflow_run.json`) is no
longer an output of dvc.yaml, so DVC removes it from the workspace ("unused link"), before
any stage, `check` included, can run. The files stay in the DVC cache, recorded in the
dvc.lock of the workspace, of each experiment and of each commit that trained them.
"""

from __future__ import annotations

import configparser
import dataclasses
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import yaml

LOCK_FILE = "dvc.lock"
WORKSPACE = "this workspace's dvc.lock"


def read_selection(params_path: Path) -> tuple[list[str] | None, str | None]:
    """The configs a params file names and the one it selects, read even where one of its
    values is wrong (a mistyped `model`, say); None for what it lacks or cannot be read."""
    try:
        raw = yaml.safe_load(Path(params_path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None, None
    if not isinstance(raw, dict):
        return None, None
    models = raw.get("models")
    configs = [str(name) for name in models] if isinstance(models, dict) and models else None
    return configs, str(raw["model"]) if "model" in raw else None


def model_path(config: str) -> str:
    return f"models/{config}/model.pt"


@dataclass(frozen=True)
class Place:
    """Where a model file is recorded: `where` in words, `command` brings it back."""

    where: str
    command: str
    md5: str
    cached: bool


def locked_files(lock_text: str | None) -> dict[str, str]:
    """Every file output a dvc.lock records (folders left out): path -> md5."""
    try:
        lock = yaml.safe_load(lock_text or "") or {}
    except yaml.YAMLError:
        return {}
    files = {}
    for stage in (lock.get("stages") or {}).values():
        for out in (stage or {}).get("outs") or []:
            md5 = str(out.get("md5") or "")
            if md5 and not md5.endswith(".dir"):
                files[str(out["path"])] = md5
    return files


def cache_dir(root: Path) -> Path:
    """The DVC cache's md5 folder: `cache.dir` of .dvc/config(.local), else .dvc/cache."""
    folder = root / ".dvc" / "cache"
    for name in ("config", "config.local"):
        parser = configparser.ConfigParser()
        try:
            parser.read(root / ".dvc" / name, encoding="utf-8")
        except configparser.Error:
            continue
        if parser.has_option("cache", "dir"):
            folder = (root / ".dvc" / parser.get("cache", "dir")).resolve()
    return folder / "files" / "md5"


def cached_file(root: Path, md5: str) -> Path | None:
    path = cache_dir(root) / md5[:2] / md5[2:]
    return path if path.is_file() else None


def _git(root: Path, *args: str) -> str | None:
    try:
        result = subprocess.run(
            ["git", *args], cwd=root, capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout if result.returncode == 0 else None


def _experiments(root: Path) -> list[tuple[str, str]]:
    """(name, ref) of every local experiment, newest first (DVC keeps them as git refs)."""
    refs = _git(root, "for-each-ref", "--sort=-committerdate", "--format=%(refname)", "refs/exps")
    found = []
    for ref in (refs or "").split():
        parts = ref.split("/")
        if len(parts) >= 5 and parts[2] != "exec":  # refs/exps/ab/cdef.../<name>
            found.append((parts[-1], ref))
    return found


def places(root: Path, config: str, selected: str | None = None) -> list[Place]:
    """Where models/<config>/model.pt is recorded, best first, each with the command that
    brings it back: this workspace's dvc.lock where params.yaml selects `config`; else an
    experiment holding the workspace's file, the workspace's dvc.lock, the other
    experiments (newest first), the commit HEAD."""
    target = model_path(config)
    found: list[Place] = []

    def add(where: str, command: str, lock_text: str | None) -> None:
        md5 = locked_files(lock_text).get(target)
        if md5:
            found.append(Place(where, command, md5, cached_file(root, md5) is not None))

    workspace_lock = root / LOCK_FILE
    if workspace_lock.is_file():
        lock_text = workspace_lock.read_text(encoding="utf-8")
        if selected == config:
            add(WORKSPACE, f"dvc checkout {target}", lock_text)
            if found and not found[0].cached:
                found[0] = dataclasses.replace(found[0], command=f"dvc pull {target}")
        else:
            add(WORKSPACE, f"set `model: {config}` in params.yaml, then dvc checkout", lock_text)
    for name, ref in _experiments(root):
        add(f"experiment {name}", f"dvc exp apply {name}", _git(root, "show", f"{ref}:{LOCK_FILE}"))
    add(
        "the commit HEAD",
        f"git checkout HEAD -- params.yaml {LOCK_FILE} && dvc checkout",
        _git(root, "show", f"HEAD:{LOCK_FILE}"),
    )
    own = next((p for p in found if p.where == WORKSPACE), None)
    if own is None or selected == config:
        return found
    # one command beats two: an experiment that holds the same file goes first
    same = [p for p in found if p.md5 == own.md5 and p.where.startswith("experiment ")]
    return [*same, *(p for p in found if p not in same)]


def missing_model_message(
    root: Path, config: str, configs: list[str] | None, selected: str | None = None
) -> str:
    """One line for a config whose model file is not in the workspace: where it is and the
    command that brings it back, or that it was never trained; with the configs listed.
    `selected`: the config params.yaml selects."""
    path = model_path(config)
    listed = f"; configs: {', '.join(configs)}" if configs else ""
    if configs is not None and config not in configs:
        return f"{path}: no such model file, and '{config}' is not a config{listed}"
    found = places(root, config, selected)
    if not found:
        return f"{path}: never trained here (no dvc.lock records it): dvc exp run -S model={config}"
    best = next((p for p in found if p.cached), found[0])
    where = "in the DVC cache" if best.cached else "not in the local DVC cache (dvc pull)"
    return f"{path}: not in the workspace; it is {where}, from {best.where}: {best.command}{listed}"


def restore_removed(root: Path, folder: str = "models/") -> list[Path]:
    """Put back from the DVC cache each file under `folder` that this workspace's dvc.lock
    records and the workspace lacks (DVC removed it when `model` changed); returns them."""
    lock = root / LOCK_FILE
    if not lock.is_file():
        return []
    restored = []
    for path, md5 in sorted(locked_files(lock.read_text(encoding="utf-8")).items()):
        dest = root / path
        source = cached_file(root, md5)
        if path.startswith(folder) and source is not None and not dest.exists():
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, dest)
            restored.append(dest)
    return restored


def remove_empty_model_folder(root: Path, config: str) -> None:
    """DVC's checkout of a selection it has nothing for leaves models/<config>/ empty."""
    folder = root / "models" / config
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()
