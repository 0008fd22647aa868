"""Which source files a command runs, read from its imports, and one hash of them.

dvc.yaml lists each stage's code deps (`scripts/stage_deps.py` writes them from here, and a
test fails when they drift), and a training checkpoint records the hash of the same files,
so a run is resumed only by the code that started it. Imports are read from the source
(`ast`), lazy ones inside functions included, `if TYPE_CHECKING:` blocks excluded: a module
a command may import is a module it runs. One exception: the imports in a package's
module-level `__getattr__` (PEP 562 lazy exports, e.g. `ptblm.load_model`) run only when
a name is asked for, so they count only for files that import a name from that package
which is not a module of it (`from ptblm import load_model`). Without it, `import
ptblm.commands.fetch` would seem to run the whole package and the fetch stage would
download the archive again after any change to the model.
"""

from __future__ import annotations

import ast
import hashlib
from pathlib import Path

PACKAGE = "ptblm"
PACKAGE_DIR = Path(__file__).resolve().parent


def _module_file(module: str, package_dir: Path) -> Path | None:
    """The file of `ptblm.a.b` (a module or a package), None if it is not one of ours."""
    parts = module.split(".")
    if parts[0] != PACKAGE:
        return None
    base = package_dir.joinpath(*parts[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _module_name(path: Path, package_dir: Path) -> str:
    parts = path.relative_to(package_dir).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join((PACKAGE, *parts))


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _is_lazy_exports(node: ast.AST) -> bool:
    return isinstance(node, ast.FunctionDef) and node.name == "__getattr__"


def _imported_modules(path: Path, package_dir: Path, lazy: bool = False) -> set[str]:
    """Absolute names of every module `path` imports (and of the modules `from x import y`
    may mean: x, and x.y when y is a submodule). `lazy`: only those of its module-level
    `__getattr__` instead."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    in_package = path.resolve().is_relative_to(package_dir)
    own = _module_name(path.resolve(), package_dir) if in_package else ""
    is_package = path.name == "__init__.py"
    found: set[str] = {own} if own else set()  # importing a module runs its packages' inits
    roots = [node for node in tree.body if _is_lazy_exports(node) == lazy]

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = own.split(".")
                anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    for root in roots:
        visit(root)
    return found


def code_files(entry: Path, package_dir: Path = PACKAGE_DIR) -> list[Path]:
    """`entry` and every package file it imports, directly or not, with the `__init__.py` of
    each package on the way (importing a.b runs a/__init__.py), and the modules beside a
    script that it imports by name (stages/_workspace.py); sorted."""
    package_dir = package_dir.resolve()
    seen: set[tuple[Path, bool]] = set()  # (file, read for its lazy exports only)
    todo = [(Path(entry).resolve(), False)]
    while todo:
        path, lazy = todo.pop()
        if (path, lazy) in seen:
            continue
        seen.add((path, lazy))
        beside = not path.is_relative_to(package_dir)  # a script: its own dir is on sys.path
        for module in _imported_modules(path, package_dir, lazy):
            sibling = path.parent / f"{module}.py"
            if beside and "." not in module and sibling.is_file():
                todo.append((sibling.resolve(), False))  # e.g. stages/_workspace.py
            parts = module.split(".")
            for depth in range(1, len(parts) + 1):
                found = _module_file(".".join(parts[:depth]), package_dir)
                if found is not None:
                    todo.append((found, False))
            parent = _module_file(".".join(parts[:-1]), package_dir)
            if parent is not None and _module_file(module, package_dir) is None:
                todo.append((parent, True))  # `from package import name`: maybe a lazy export
    return sorted({path for path, _ in seen})


def code_version(entry: Path, package_dir: Path = PACKAGE_DIR) -> str:
    """sha256 of the code `entry` runs: each file's path (within the package) and bytes."""
    digest = hashlib.sha256()
    for path in code_files(entry, package_dir):
        name = path.relative_to(package_dir) if path.is_relative_to(package_dir) else path.name
        digest.update(f"{name}\0".encode())
        digest.update(path.read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()


def training_code_version() -> str:
    """The hash a checkpoint records: the training loop (`ptblm.train`) and what it imports,
    the code that computes the model, and no more. A fix to tracking, plots, scoring or the
    CLI leaves a checkpoint resumable; a change to the model, the step or the batching
    does not."""
    return code_version(PACKAGE_DIR / "train.py")
