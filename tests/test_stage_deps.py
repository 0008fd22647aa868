"""Each DVC stage depends on the code it runs, read from its imports, and on no other code."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import PROJECT_ROOT

from ptblm.codedeps import code_files, code_version

spec = importlib.util.spec_from_file_location(
    "stage_deps", PROJECT_ROOT / "scripts" / "stage_deps.py"
)
stage_deps = importlib.util.module_from_spec(spec)
spec.loader.exec_module(stage_deps)


def test_dvc_yaml_lists_exactly_the_code_each_stage_imports():
    assert stage_deps.drift() == {}, "run: python scripts/stage_deps.py"


def test_train_runs_the_model_and_the_batching_but_not_compare():
    deps = stage_deps.derived_code_deps(PROJECT_ROOT, "stages/train.py")
    assert {"src/ptblm/model.py", "src/ptblm/data.py", "src/ptblm/config.py"} <= set(deps)
    assert "src/ptblm/compare.py" not in deps
    assert "src/ptblm/cli.py" not in deps  # the command group: other commands' code
    evaluate = stage_deps.derived_code_deps(PROJECT_ROOT, "stages/evaluate.py")
    assert {"src/ptblm/model.py", "src/ptblm/data.py"} <= set(evaluate)


def _copy(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    for name in ("src", "stages", "scripts"):
        shutil.copytree(
            PROJECT_ROOT / name,
            root / name,
            ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"),
        )
    shutil.copy2(PROJECT_ROOT / "dvc.yaml", root / "dvc.yaml")
    return root


def test_a_new_import_the_deps_miss_is_caught(tmp_path):
    root = _copy(tmp_path)
    command = root / "src" / "ptblm" / "commands" / "train.py"
    command.write_text(
        command.read_text().replace(
            "    from ..codedeps import code_version\n",
            "    from ..codedeps import code_version\n    from ..compare import render  # noqa\n",
        )
    )
    assert stage_deps.drift(root) == {"train": (["src/ptblm/compare.py"], [])}
    stage_deps.write(root)  # the fix the failure names
    assert stage_deps.drift(root) == {}
    assert "src/ptblm/compare.py" in (root / "dvc.yaml").read_text()


def test_imports_inside_functions_count_type_checking_ones_do_not(tmp_path):
    package = tmp_path / "ptblm"
    (package / "sub").mkdir(parents=True)
    for name in ("__init__.py", "sub/__init__.py", "a.py", "b.py", "c.py", "d.py"):
        (package / name).write_text("")
    (package / "sub" / "entry.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "from .. import a\n"
        "if TYPE_CHECKING:\n    from ..d import X\n"
        "def f():\n    from ptblm.b import thing\n"
    )
    (package / "b.py").write_text("from .c import y\n")
    files = {
        p.relative_to(package).as_posix() for p in code_files(package / "sub" / "entry.py", package)
    }
    assert files == {"__init__.py", "sub/__init__.py", "sub/entry.py", "a.py", "b.py", "c.py"}
    before = code_version(package / "sub" / "entry.py", package)
    (package / "c.py").write_text("y = 1\n")  # a file two imports away
    assert code_version(package / "sub" / "entry.py", package) != before
    (package / "d.py").write_text("X = 1\n")  # only imported for type checking
    (package / "c.py").write_text("")
    assert code_version(package / "sub" / "entry.py", package) == before


def test_lazy_exports_count_only_where_their_name_is_imported(tmp_path):
    """A package `__getattr__` (PEP 562) runs its imports only when a name is asked for:
    importing a sibling module must not pull them in (the fetch stage would otherwise
    re-download after any model change); `from ptblm import heavy_thing` must."""
    package = tmp_path / "ptblm"
    package.mkdir()
    (package / "__init__.py").write_text(
        "def __getattr__(name):\n    from .heavy import heavy_thing\n    return heavy_thing\n"
    )
    (package / "heavy.py").write_text("heavy_thing = 1\n")
    (package / "light.py").write_text("from .tiny import x\n")
    (package / "tiny.py").write_text("x = 1\n")
    (package / "user.py").write_text("from ptblm import heavy_thing\n")

    def names(entry: str) -> set[str]:
        return {p.relative_to(package).as_posix() for p in code_files(package / entry, package)}

    assert names("light.py") == {"__init__.py", "light.py", "tiny.py"}
    assert names("user.py") == {"__init__.py", "user.py", "heavy.py"}


def test_fetch_does_not_depend_on_the_model():
    deps = stage_deps.derived_code_deps(PROJECT_ROOT, "stages/fetch.py")
    assert "src/ptblm/fetch.py" in deps
    assert not {"src/ptblm/model.py", "src/ptblm/api.py", "src/ptblm/train.py"} & set(deps)


def test_a_stage_runs_the_code_of_its_own_workspace(tmp_path):
    """A queued `dvc exp run` executes in a temporary copy of the repo: its stages must
    import that copy's src/, not the editable install of the main checkout (a seed run
    once died at its end importing newer modules from the main checkout)."""
    root = _copy(tmp_path)
    command = root / "src" / "ptblm" / "commands" / "check.py"
    command.write_text(command.read_text() + '\nprint("MARKER-OF-THE-COPY")\n')
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    shown = subprocess.run(
        [sys.executable, str(root / "stages" / "check.py"), "--help"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "MARKER-OF-THE-COPY" in shown.stdout
