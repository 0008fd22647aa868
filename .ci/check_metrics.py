#!/usr/bin/env python3
"""Fail (exit 1) if a committed metric file is malformed; used by `.ci/run` and CI.

Every `metrics/**/*.json` at the given git revision (default HEAD) must parse as a JSON object;
any `*_perplexity` value must be a finite number >= 1; `metrics/<config>/train.json` and
`eval.json` must carry their perplexities, their `config` (if present) must name the folder,
and eval.json and adapt.json must have scored train.json's model (their `model_md5`, where
both have one).
dvc.yaml lists the whole metrics/ folder, so any other file there (a CSV, a PNG, timings) would
be read by `dvc metrics` as a metric: that is an error too. Paths listed in dvc.yaml's top-level
`metrics:` that the revision lacks (no file, or no file under a folder) are warnings.
Only the standard library and pyyaml are used, so this runs before or after the install.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path, PurePosixPath

REQUIRED = {
    "train.json": ("train_perplexity", "valid_perplexity"),
    "eval.json": ("test_perplexity", "valid_perplexity"),
}


def is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def problems(path: str, text: str) -> list[str]:
    """What is wrong with one metric file's text (empty: nothing)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        return [f"not valid JSON ({exc})"]
    if not isinstance(data, dict):
        return [f"not a JSON object but {type(data).__name__}"]
    found = []
    parts = PurePosixPath(path).parts
    for key in REQUIRED.get(parts[-1], ()) if len(parts) == 3 else ():
        if key not in data:
            found.append(f"missing {key!r}")
    for key, value in data.items():
        if key.endswith("_perplexity"):
            if not is_number(value):
                found.append(f"{key!r} is {value!r}, not a number")
            elif not math.isfinite(value) or value < 1:
                found.append(f"{key!r} is {value!r}, not a finite perplexity >= 1")
    if len(parts) == 3 and "config" in data and data["config"] != parts[1]:
        found.append(f"'config' is {data['config']!r} but the file is in metrics/{parts[1]}/")
    return found


def mismatched_models(files: dict[str, str | None]) -> list[tuple[str, str]]:
    """metrics/<config>/eval.json or adapt.json whose `model_md5` is not train.json's: the test
    perplexity of another model than the one trained (train reran, evaluate or adapt did not,
    or failed). Files
    from before `model_md5` are not compared."""
    found = []
    for path, text in files.items():
        parts = PurePosixPath(path).parts
        if len(parts) != 3 or parts[-1] not in ("eval.json", "adapt.json") or text is None:
            continue
        trained_text = files.get(f"metrics/{parts[1]}/train.json")
        try:
            scored = json.loads(text).get("model_md5")
            trained = json.loads(trained_text).get("model_md5") if trained_text else None
        except (json.JSONDecodeError, AttributeError):
            continue  # reported as malformed already
        if scored and trained and scored != trained:
            found.append(
                (
                    path,
                    f"scored model {scored}, but train.json's model is {trained}; rerun "
                    + ("evaluate" if parts[-1] == "eval.json" else "adapt"),
                )
            )
    return found


def git(root: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=root, check=True, capture_output=True, text=True
    ).stdout


def committed_files(root: Path, rev: str) -> dict[str, str | None]:
    """Every file under metrics/ at `rev`: JSON files with their text, others with None."""
    names = git(root, "ls-tree", "-r", "--name-only", rev, "--", "metrics").splitlines()
    return {n: git(root, "show", f"{rev}:{n}") if n.endswith(".json") else None for n in names}


def workspace_files(root: Path) -> dict[str, str | None]:
    return {
        p.relative_to(root).as_posix(): p.read_text(encoding="utf-8", errors="replace")
        if p.suffix == ".json"
        else None
        for p in sorted((root / "metrics").rglob("*"))
        if p.is_file()
    }


def listed_metrics(dvc_yaml: str) -> list[str]:
    try:
        import yaml
    except ImportError:  # before the install: skip this cross-check
        return []
    entries = (yaml.safe_load(dvc_yaml) or {}).get("metrics") or []
    return [e if isinstance(e, str) else next(iter(e)) for e in entries]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--rev", default="HEAD", help="git revision to check (default HEAD)")
    where.add_argument("--workspace", action="store_true", help="check the files on disk")
    parser.add_argument("--root", type=Path, default=Path("."), help="project root")
    args = parser.parse_args(argv)
    root = args.root.resolve()
    if args.workspace:
        files, label = workspace_files(root), "workspace"
        dvc_yaml = (root / "dvc.yaml").read_text(encoding="utf-8")
    else:
        files, label = committed_files(root, args.rev), f"committed at {args.rev}"
        dvc_yaml = git(root, "show", f"{args.rev}:dvc.yaml")

    bad = 0
    for path, text in sorted(files.items()):
        if text is None or PurePosixPath(path).name == "speed.json":
            print(
                f"ERROR: {path} ({label}) is not a metric file, but `dvc metrics` reads everything "
                "under metrics/; put plot data under plots/<config>/, timings under timings/",
                file=sys.stderr,
            )
            bad += 1
            continue
        for problem in problems(path, text):
            print(f"ERROR: malformed metric file {path} ({label}): {problem}", file=sys.stderr)
            bad += 1
    for path in listed_metrics(dvc_yaml):
        if path not in files and not any(f.startswith(path.rstrip("/") + "/") for f in files):
            print(
                f"warning: {path} is listed in dvc.yaml `metrics:` but not {label}", file=sys.stderr
            )
    for path, problem in mismatched_models(files):
        print(f"ERROR: {path} ({label}): {problem}", file=sys.stderr)
        bad += 1
    if bad:
        print(f"{bad} problem(s) in the metric files {label}", file=sys.stderr)
        return 1
    print(f"{len(files)} metric file(s) {label}: all well-formed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
