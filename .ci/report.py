#!/usr/bin/env python3
"""Metrics / params / plots diff of the workspace against a git revision, as one Markdown report.

    python .ci/report.py --base origin/main --out ci-report

writes ci-report/report.md (also printed) and ci-report/plots/index.html (`dvc plots diff`).
Used by `.ci/run` and the GitHub workflow, so the local run and CI show the same thing.
Exit status: non-zero only if `dvc metrics diff` itself fails.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path


def dvc(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dvc", *args], capture_output=True, text=True, check=False
    )


def table_rows(markdown: str) -> list[str]:
    """The data rows of a Markdown table (`dvc metrics diff --md` prints a bare header when
    nothing changed)."""
    rows = [line for line in markdown.splitlines() if line.startswith("|")]
    return rows[2:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="HEAD", help="git revision to diff against")
    parser.add_argument("--out", type=Path, default=Path("ci-report"))
    parser.add_argument("--title", default=None)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    metrics = dvc("metrics", "diff", args.base, "--md", "--precision", "4")
    if metrics.returncode != 0:
        sys.stderr.write(metrics.stdout + metrics.stderr)
        print(f"dvc metrics diff {args.base} failed", file=sys.stderr)
        return metrics.returncode
    params = dvc("params", "diff", args.base, "--md")
    plots = dvc("plots", "diff", args.base, "-o", str(args.out / "plots"))

    lines = [f"## Metrics: workspace vs `{args.base}`" + (f" — {args.title}" if args.title else "")]
    lines.append("")
    if table_rows(metrics.stdout):
        lines += ["Changed metrics (`dvc metrics diff`):", "", metrics.stdout.strip(), ""]
    else:
        lines += [
            "**No metric changed** (`dvc metrics diff` has no rows): the run reproduced the "
            f"committed metrics of `{args.base}` exactly.",
            "",
        ]
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
