"""The README's everyday commands, run as written with the real `dvc` on a tiny project.

A README code block preceded by `<!-- readme-test: NAME -->` is parsed here (comments after
`#` dropped) and run line by line in a copy of the tiny project. The one mapping: that
project's `small`, `medium` and `large` configs are tiny ones (TINY_CONFIG, one epoch), so
`-S model=small,medium,large` and `-S models.small.cell=gru` run verbatim in seconds. Its
`metrics/`, `plots/` and `timings/` are this checkout's committed ones, as in a clone, so
`dvc exp show` sees every config's results as it does in the real project.
"""

from __future__ import annotations

import re
import shlex
import time
from pathlib import Path

import pytest
import yaml
from conftest import PROJECT_ROOT, TINY_CONFIG, committed_tree, copy_project, git, run, tool_env

README = PROJECT_ROOT / "README.md"
MARKER = re.compile(r"^<!-- readme-test: ([\w-]+)\b.*-->$")
CONFIGS = ("small", "medium", "large")


def readme_blocks(text: str) -> dict[str, list[list[str]]]:
    """{name: commands} of each marked block: the indented lines after the marker, each
    split as a shell would split it (quotes, `# comment`)."""
    blocks: dict[str, list[list[str]]] = {}
    lines = text.splitlines()
    for i, line in enumerate(lines):
        found = MARKER.match(line.strip())
        if not found:
            continue
        commands, j = [], i + 1
        while j < len(lines) and not lines[j].strip():
            j += 1
        while j < len(lines) and (lines[j].startswith("    ") or not lines[j].strip()):
            if lines[j].strip():
                commands.append(shlex.split(lines[j], comments=True))
            j += 1
        assert commands, f"README.md: no indented commands after {line!r}"
        blocks[found.group(1)] = commands
    return blocks


BLOCKS = readme_blocks(README.read_text(encoding="utf-8"))


def test_the_readme_marks_its_everyday_blocks():
    assert set(BLOCKS) == {"choose", "sweep", "seeds"}
    for commands in BLOCKS.values():
        assert all(c[0] in ("dvc", "ptblm") for c in commands), commands


@pytest.fixture
def project(tiny_template: Path, tmp_path: Path) -> Path:
    """The tiny project, its small, medium and large configs tiny (hidden 16, 12, 8), with
    this checkout's committed results."""
    repo = copy_project(tiny_template, tmp_path)
    params = yaml.safe_load((repo / "params.yaml").read_text(encoding="utf-8"))
    for config, hidden in zip(CONFIGS, (16, 12, 8), strict=True):
        params["models"][config] = {**TINY_CONFIG, "max_max_epoch": 1, "hidden_size": hidden}
    params["model"] = "small"
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    for folder in ("metrics", "plots", "timings"):
        committed_tree(folder, repo)
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "small, medium and large are tiny; the committed results")
    return repo


def run_block(repo: Path, name: str) -> dict[str, str]:
    """Run block `name` as written; {command line: stdout}. `dvc queue status` is what the
    README says to watch: it is rerun until nothing is queued or running."""
    env = tool_env(repo)
    out = {}
    for args in BLOCKS[name]:
        line = shlex.join(args)
        if args[:3] == ["dvc", "queue", "status"]:
            deadline = time.monotonic() + 600
            while any(w in (status := run(args, repo, env).stdout) for w in ("Queued", "Running")):
                assert time.monotonic() < deadline, status
                time.sleep(2)
            assert "Failed" not in status, status + "".join(
                run(["dvc", "queue", "logs", n], repo, env, check=False).stdout
                for n in re.findall(r"^(\S+)\s.*Failed", status, flags=re.M)
            )
            out[line] = status
        else:
            out[line] = run(args, repo, env, timeout=600).stdout
    return out


def table_rows(text: str) -> list[list[str]]:
    """The cells of a plain table (`ptblm compare`, `dvc exp show`): split on 2+ spaces,
    rules and blank lines dropped."""
    rows = []
    for line in text.splitlines():
        if line.strip() and not set(line.strip()) <= set("─━-|: "):
            rows.append(re.split(r"\s{2,}", line.strip()))
    return rows


@pytest.mark.e2e  # real dvc, real training processes
def test_choose_a_config_or_a_variant(project: Path):
    run_block(project, "choose")
    params = yaml.safe_load((project / "params.yaml").read_text(encoding="utf-8"))
    # the last line's switch is in the workspace; every line trained and evaluated
    assert params["models"]["small"]["keep_prob"] == 0.9
    shown = run(["dvc", "exp", "ls", "--name-only"], project, tool_env(project)).stdout.split()
    assert len(shown) == 3, shown


@pytest.mark.e2e  # real dvc, real training processes
def test_sweep_queue_and_look(project: Path):
    out = run_block(project, "sweep")
    compare = next(v for k, v in out.items() if k.startswith("ptblm compare"))
    names = run(["dvc", "exp", "ls", "--name-only"], project, tool_env(project)).stdout.split()
    assert len(names) == 3, names
    configs = set()
    for name in names:  # run, config, train, valid, test, ...: each run's perplexities
        (line,) = [line.split() for line in compare.splitlines() if line.split()[:1] == [name]]
        configs.add(line[1])
        assert all(float(cell) > 1 for cell in line[2:5]), line
    assert configs == set(CONFIGS), compare
    header = compare.splitlines()[0].split()
    assert "hidden_size" in header and "init_scale" not in header, header  # differing only

    show = next(v for k, v in out.items() if k.startswith("dvc exp show"))
    header, *rows = table_rows(show)
    committed = {p.name for p in (project / "metrics").iterdir() if p.is_dir()}
    assert header[0] == "Experiment" and header[-1] == "model", header
    # readable: the experiment, its config, one test perplexity per config's results
    assert len(header) == 2 + len(committed) <= 12, header
    for config in CONFIGS:
        column = header.index(f"metrics/{config}/eval.json:test_perplexity")
        experiments = [r for r in rows if r[-1] == config and r[0][:1] in "├└"]
        assert len(experiments) == 1, show
        assert float(experiments[0][column]) > 1, show


@pytest.mark.e2e  # real dvc, real training processes
def test_error_bars_from_seeds(project: Path):
    out = run_block(project, "seeds")
    (markdown,) = [v for k, v in out.items() if k.startswith("ptblm compare")]
    rows = [
        [cell.strip() for cell in line.strip("|").split("|")]
        for line in markdown.splitlines()
        if line.startswith("|")
    ]
    header = rows[0]
    (mean,) = [r for r in rows if r[0] == "mean of 3 runs"]
    assert mean[header.index("n")] == "3"
    assert float(mean[header.index("sd test")]) > 0
    seeds = {r[header.index("train.seed")] for r in rows if r[1] == "small"}
    assert {"1", "2", "3"} <= seeds


def test_the_cpu_install_takes_the_wheel_ci_takes():
    """A plain `pip install torch==2.13.0` gets PyPI's CUDA build; the README's CPU line takes
    the CPU wheel from the index the workflow uses, at the version the quick start pins."""
    readme = README.read_text(encoding="utf-8")
    workflow = (PROJECT_ROOT / ".github" / "workflows" / "ci.yml").read_text(encoding="utf-8")
    (version,) = re.findall(r'TORCH_VERSION: "([\d.]+)"', workflow)
    index = "--index-url https://download.pytorch.org/whl/cpu"
    assert f'pip install "torch==${{TORCH_VERSION}}" {index}' in workflow
    lines = [line.strip() for line in readme.splitlines()]
    assert f"pip install torch=={version} {index}" in " ".join(
        line for line in lines if line.startswith("python3 -m venv")
    )
    assert "the pin lets CPU-only machines" not in readme
