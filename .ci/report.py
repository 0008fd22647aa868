#!/usr/bin/env python3
"""Metrics / params / plots diff of the workspace against a git revision, as one Markdown report.

    python .ci/report.py --base origin/main --out ci-report

writes ci-report/report.md (also printed) and ci-report/plots/index.html (`dvc plots diff`).
Used by `.ci/run` and the GitHub workflow, so the local run and CI show the same thing.
Rows of `dvc metrics diff` that differ only by cross-CPU float rounding (see REL_TOL) are
listed apart, as such, and do not count as a change.
Exit status: non-zero only if `dvc metrics diff` itself fails.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

# Float32 training gives slightly different sums on different CPUs (vector width, FMA, the
# order of reductions): the committed metrics/test was made on an AMD Zen 3, and an Intel Xeon
# (AVX-512/AMX) gives 632.8733 for 632.8732, 470.4909 for 470.491: 2.1e-7 relative at most,
# one unit in the 4th decimal the files keep. A change that moves the model moves these numbers
# by orders of magnitude more (the smallest real change so far, the fast path, moved the test
# config's test perplexity 476.3038 -> 470.4909, 1.2e-2). 1e-6 relative is 5x the rounding seen
# and 10^4 times below that change.
REL_TOL = 1e-6


def dvc(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dvc", *args], capture_output=True, text=True, check=False
    )


def table_rows(markdown: str) -> list[str]:
    """The data rows of a Markdown table (`dvc metrics diff --md` prints a bare header when
    nothing changed)."""
    rows = [line for line in markdown.splitlines() if line.startswith("|")]
    return rows[2:]


def is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def within_rounding(change: dict) -> bool:
    """Old and new are both numbers and differ by at most REL_TOL of the larger one."""
    old, new = change.get("old"), change.get("new")
    if not (is_number(old) and is_number(new)):
        return False  # a new, removed or non-numeric metric is a change
    return abs(new - old) <= REL_TOL * max(abs(old), abs(new))


def split_diff(markdown: str, changes: dict) -> tuple[list[str], list[str], list[str]]:
    """`dvc metrics diff --md`'s header, its rows that are real changes, and its rows within
    cross-CPU rounding; `changes` is `dvc metrics diff --json` of the same diff."""
    lines = [line for line in markdown.splitlines() if line.startswith("|")]
    real, rounding = [], []
    for row in lines[2:]:
        path, metric = (cell.strip() for cell in row.split("|")[1:3])
        change = changes.get(path, {}).get(metric, {})
        (rounding if within_rounding(change) else real).append(row)
    return lines[:2], real, rounding


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="HEAD", help="git revision to diff against")
    parser.add_argument("--out", type=Path, default=Path("ci-report"))
    parser.add_argument("--title", default=None)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    metrics = dvc("metrics", "diff", args.base, "--md", "--precision", "4")
    changes = dvc("metrics", "diff", args.base, "--json")
    for result in (metrics, changes):
        if result.returncode != 0:
            sys.stderr.write(result.stdout + result.stderr)
            print(f"dvc metrics diff {args.base} failed", file=sys.stderr)
            return result.returncode
    header, real, rounding = split_diff(metrics.stdout, json.loads(changes.stdout or "{}"))
    params = dvc("params", "diff", args.base, "--md")
    plots = dvc("plots", "diff", args.base, "-o", str(args.out / "plots"))

    lines = [f"## Metrics: workspace vs `{args.base}`" + (f" — {args.title}" if args.title else "")]
    lines.append("")
    if real:
        lines += ["Changed metrics (`dvc metrics diff`):", "", *header, *real, ""]
    elif rounding:
        lines += [
            "**No metric changed** beyond cross-CPU float rounding: the run reproduced the "
            f"committed metrics of `{args.base}`, up to the rounding listed below.",
            "",
        ]
    else:
        lines += [
            "**No metric changed** (`dvc metrics diff` has no rows): the run reproduced the "
            f"committed metrics of `{args.base}` exactly.",
            "",
        ]
    if rounding:
        lines += [
            f"Within cross-CPU float rounding (at most {REL_TOL:g} relative, see REL_TOL in "
            "`.ci/report.py`), not a change of the model:",
            "",
            *header,
            *rounding,
            "",
        ]
    if not real:
        everything = dvc("metrics", "diff", args.base, "--md", "--all", "--precision", "4")
        if everything.stdout.strip():
            lines += [
                "<details><summary>All metrics</summary>",
                "",
                everything.stdout.strip(),
                "",
                "</details>",
                "",
            ]
    if params.returncode == 0 and table_rows(params.stdout):
        lines += ["Changed params (`dvc params diff`):", "", params.stdout.strip(), ""]
    if plots.returncode == 0:
        lines += [
            f"Plots (`dvc plots diff {args.base}`): `{args.out / 'plots' / 'index.html'}` "
            "(in the CI artifacts)."
        ]
    else:
        lines += [f"`dvc plots diff {args.base}` failed: {plots.stderr.strip()[-500:]}"]
    report = "\n".join(lines) + "\n"
    (args.out / "report.md").write_text(report, encoding="utf-8")
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
