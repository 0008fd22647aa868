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
    # the command group (other commands' code): not run, since the train stage's torchrun
    # ranks run stages/train.py itself, not `-m ptblm` (test_ranks_run_the_stage_entry...)
    assert "src/ptblm/cli.py" not in deps and "src/ptblm/__main__.py" not in deps
    evaluate = stage_deps.derived_code_deps(PROJECT_ROOT, "stages/evaluate.py")
    assert {"src/ptblm/model.py", "src/ptblm/data.py"} <= set(evaluate)


def test_every_stage_depends_on_the_workspace_module_it_imports_first():
    for stage in ("fetch", "extract", "prepare", "check", "train", "evaluate"):
        deps = stage_deps.derived_code_deps(PROJECT_ROOT, f"stages/{stage}.py")
        assert "stages/_workspace.py" in deps, stage


def test_ranks_run_the_stage_entry_so_its_deps_are_their_code():
    from ptblm.launch import rank_program

    stage = PROJECT_ROOT / "stages" / "train.py"
    args = ["train", "--params", "params.yaml", "--tracking"]
    assert rank_program(str(stage), args) == [str(stage), "--params", "params.yaml", "--tracking"]
    assert rank_program("/venv/bin/ptblm", args) == ["-m", "ptblm", *args]
    assert rank_program("/src/ptblm/__main__.py", args) == ["-m", "ptblm", *args]


def test_the_checkpoint_hash_covers_the_training_loop_and_nothing_far_from_it(tmp_path):
    """A fix in MLflow logging, plots, scoring or the CLI keeps a long run's checkpoint; a
    change to the model does not."""
    root = _copy(tmp_path)
    package = root / "src" / "ptblm"
    names = {p.name for p in code_files(package / "train.py", package)}
    assert {"model.py", "step.py", "data.py", "epoch.py", "checkpoint.py"} <= names
    far = {"tracking.py", "plots.py", "score.py", "text.py", "api.py", "mlflow_model.py"}
    assert not names & (far | {"cli.py", "launch.py", "model_logging.py"})
    before = code_version(package / "train.py", package)
    for name in far:
        (package / name).write_text((package / name).read_text() + "# a fix\n")
    assert code_version(package / "train.py", package) == before
    (package / "model.py").write_text((package / "model.py").read_text() + "# a change\n")
    assert code_version(package / "train.py", package) != before


def test_the_tracking_layer_imports_nothing_of_the_using_models_layer():
    package = PROJECT_ROOT / "src" / "ptblm"
    names = {p.name for p in code_files(package / "tracking.py", package)}
    assert not names & {"api.py", "score.py", "mlflow_model.py", "generate.py", "train.py"}


def test_params_deps_follow_the_settings_table(tmp_path):
    """train and evaluate depend on the result keys of config.SETTINGS, and only on them."""
    from ptblm.config import stage_params

    assert "train.num_threads" not in stage_params("train")
    assert stage_params("train")[:2] == ["model", "models.${model}"]
    assert "evaluate.batch_size" in stage_params("evaluate")
    root = _copy(tmp_path)
    dvc_yaml = root / "dvc.yaml"
    dvc_yaml.write_text(dvc_yaml.read_text().replace("      - train.seed\n", "      - train\n"))
    assert stage_deps.drift(root) == {"train": (["param train.seed"], ["param train"])}
    stage_deps.write(root)
    assert stage_deps.drift(root) == {}


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
            "    from ..codedeps import training_code_version\n",
            "    from ..codedeps import training_code_version\n"
            "    from ..compare import render  # noqa\n",
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
