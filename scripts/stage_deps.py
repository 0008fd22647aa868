#!/usr/bin/env python3
"""Write (or, with --check, verify) each dvc.yaml stage's code deps: its entry point under
stages/ and every ptblm module that entry imports (ptblm.codedeps reads the imports); and the
params deps of train and evaluate: the result keys of ptblm.config.SETTINGS for each.

A stage then depends on exactly the code it runs: a change to compare.py retrains nothing,
a change to data.py's batching reruns train and evaluate. Other deps (data, models) and the
file's comments are kept. Run it after changing what a stage's code imports:

    python scripts/stage_deps.py          # rewrite the code deps in dvc.yaml
    python scripts/stage_deps.py --check  # exit 1, naming each stage whose deps drifted
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ruamel.yaml import YAML

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from ptblm.codedeps import code_files  # noqa: E402
from ptblm.config import stage_params  # noqa: E402

CODE_DIRS = ("src/", "stages/")
PARAMS_FROM_SETTINGS = ("train", "evaluate")  # check validates all of train and evaluate


def entry_point(cmd: str) -> str | None:
    """stages/<x>.py of a `python stages/<x>.py ...` command."""
    words = cmd.split()
    return words[1] if len(words) > 1 and words[0] == "python" else None


def derived_code_deps(root: Path, entry: str) -> list[str]:
    package = root / "src" / "ptblm"
    return [p.relative_to(root).as_posix() for p in code_files(root / entry, package)]


def drift(root: Path = ROOT) -> dict[str, tuple[list[str], list[str]]]:
    """Per stage: (deps it lacks, deps it lists but does not need), code and params."""
    stages = YAML().load((root / "dvc.yaml").read_text())["stages"]
    found = {}
    for name, stage in stages.items():
        entry = entry_point(stage["cmd"])
        if entry is None:
            continue
        listed = {d for d in stage.get("deps", []) if str(d).startswith(CODE_DIRS)}
        wanted = set(derived_code_deps(root, entry))
        if name in PARAMS_FROM_SETTINGS:
            listed |= {f"param {p}" for p in stage.get("params", [])}
            wanted |= {f"param {p}" for p in stage_params(name)}
        if listed != wanted:
            found[name] = (sorted(wanted - listed), sorted(listed - wanted))
    return found


def write(root: Path = ROOT) -> None:
    yaml = YAML()
    yaml.preserve_quotes = True
    yaml.indent(mapping=2, sequence=4, offset=2)
    path = root / "dvc.yaml"
    document = yaml.load(path.read_text())
    for name, stage in document["stages"].items():
        entry = entry_point(stage["cmd"])
        if entry is None:
            continue
        if "deps" not in stage:
            stage.insert(list(stage).index("cmd") + 1, "deps", [])
        deps = stage["deps"]
        other = [d for d in deps if not str(d).startswith(CODE_DIRS)]
        deps.clear()
        deps.extend([*other, *derived_code_deps(root, entry)])
        if name in PARAMS_FROM_SETTINGS:
            stage["params"].clear()
            stage["params"].extend(stage_params(name))
    with open(path, "w") as out:
        yaml.dump(document, out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="verify only; exit 1 on drift")
    args = parser.parse_args()
    if not args.check:
        write()
    problems = drift()
    for stage, (missing, extra) in problems.items():
        if missing:
            print(f"dvc.yaml: stage {stage} runs but does not depend on: {', '.join(missing)}")
        if extra:
            print(f"dvc.yaml: stage {stage} depends on what it does not run: {', '.join(extra)}")
    if problems:
        print("fix: python scripts/stage_deps.py", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
