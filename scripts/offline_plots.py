#!/usr/bin/env python3
"""Write an HTML template for `dvc plots show/diff` whose charts draw offline.

DVC's own page loads vega, vega-lite and vega-embed from cdn.jsdelivr.net: offline, its
interactive charts are blank (the PNGs still show). This fetches the same three npm
packages, at the versions this DVC loads, once, and writes a template with their minified
builds inlined, so every page made from it is one self-contained file:

    python scripts/offline_plots.py                    # writes .dvc/tmp/offline-plots.html
    dvc plots show --html-template .dvc/tmp/offline-plots.html
    dvc config --local plots.html_template tmp/offline-plots.html   # or for every show/diff

Fetching needs the npm registry once (--registry: another registry or a file:// mirror with
the registry's layout, <name>/-/<name>-<version>.tgz).
"""

from __future__ import annotations

import argparse
import io
import re
import sys
import tarfile
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / ".dvc" / "tmp" / "offline-plots.html"
REGISTRY = "https://registry.npmjs.org"

TEMPLATE = """<!DOCTYPE html>
<html>
<head>
    {{refresh_tag}}
    <meta charset="utf-8">
    <title>DVC Plot</title>
{scripts}
    <style>
        table {{
            border-spacing: 15px;
        }}
    </style>
</head>
<body>
    {{plot_divs}}
</body>
</html>
"""


def dvc_packages() -> list[tuple[str, str]]:
    """[(name, version)] of the scripts DVC's vega renderer loads from the CDN."""
    from dvc_render.vega import VegaRenderer

    found = re.findall(r"cdn\.jsdelivr\.net/npm/([\w-]+)@([\w.-]+)", VegaRenderer.SCRIPTS)
    if not found:
        sys.exit("error: found no CDN scripts in dvc_render's VegaRenderer.SCRIPTS")
    return found


def fetch_build(registry: str, name: str, version: str) -> str:
    """package/build/<name>.min.js of the npm package's tarball (the file the CDN serves)."""
    url = f"{registry.rstrip('/')}/{name}/-/{name}-{version}.tgz"
    with urllib.request.urlopen(url, timeout=60) as response:
        data = response.read()
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        try:
            return tar.extractfile(f"package/build/{name}.min.js").read().decode("utf-8")
        except (KeyError, AttributeError):
            sys.exit(f"error: {url} has no package/build/{name}.min.js")


def inline(name: str, version: str, code: str) -> str:
    # "</script" would end the element early; DVC fills the template by replacing
    # "{plot_divs}", "{scripts}" and "{refresh_tag}" wherever they are
    if re.search(r"</script", code, flags=re.IGNORECASE) or re.search(
        r"\{(plot_divs|scripts|refresh_tag)\}", code
    ):
        sys.exit(f"error: {name}@{version} cannot be inlined: it holds </script or a placeholder")
    return f"    <script>/* {name}@{version} */\n{code}\n    </script>"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the template to write")
    parser.add_argument("--registry", default=REGISTRY, help="npm registry (or file:// mirror)")
    args = parser.parse_args(argv)
    scripts = [inline(n, v, fetch_build(args.registry, n, v)) for n, v in dvc_packages()]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(TEMPLATE.format(scripts="\n".join(scripts)), encoding="utf-8")
    packages = ", ".join(f"{n}@{v}" for n, v in dvc_packages())
    print(f"wrote {args.out} ({args.out.stat().st_size:,} bytes: {packages} inlined)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
