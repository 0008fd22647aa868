"""scripts/offline_plots.py: a `dvc plots show` template with vega, vega-lite and vega-embed
inlined, so the charts draw offline (DVC's own page loads them from a CDN)."""

from __future__ import annotations

import importlib.util
import io
import sys
import tarfile
from pathlib import Path

from conftest import PROJECT_ROOT, committed_tree, dvc, make_project, run, tool_env

SCRIPT = PROJECT_ROOT / "scripts" / "offline_plots.py"
spec = importlib.util.spec_from_file_location("offline_plots", SCRIPT)
offline_plots = importlib.util.module_from_spec(spec)
spec.loader.exec_module(offline_plots)


def npm_mirror(root: Path) -> dict[str, str]:
    """A file:// npm registry holding the packages DVC loads, each build a marker line."""
    markers = {}
    for name, version in offline_plots.dvc_packages():
        markers[name] = f"window.{name.replace('-', '_')}_{version.replace('.', '_')} = 1;"
        folder = root / name / "-"
        folder.mkdir(parents=True)
        with tarfile.open(folder / f"{name}-{version}.tgz", "w:gz") as tar:
            data = markers[name].encode()
            info = tarfile.TarInfo(f"package/build/{name}.min.js")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return markers


def test_dvc_loads_vega_from_a_cdn_and_the_template_inlines_it(tmp_path: Path):
    assert {name for name, _ in offline_plots.dvc_packages()} == {
        "vega", "vega-lite", "vega-embed",
    }  # fmt: skip
    markers = npm_mirror(tmp_path / "npm")
    repo = make_project(tmp_path)
    committed_tree("plots", repo)
    template = repo / ".dvc" / "tmp" / "offline-plots.html"
    registry = (tmp_path / "npm").as_uri()
    run([sys.executable, str(SCRIPT), "--out", str(template), "--registry", registry], repo)

    env = tool_env(repo)
    dvc(repo, "plots", "show", "-o", "cdn", env=env)
    cdn = (repo / "cdn" / "index.html").read_text(encoding="utf-8")
    assert '<script src="https://cdn.jsdelivr.net/npm/vega@' in cdn  # what breaks offline

    dvc(repo, "plots", "show", "--html-template", str(template), "-o", "offline", env=env)
    # as the docs say: once in the local config, for every show and diff
    dvc(repo, "config", "--local", "plots.html_template", "tmp/offline-plots.html", env=env)
    dvc(repo, "plots", "show", "-o", "configured", env=env)
    for out in ("offline", "configured"):
        page = (repo / out / "index.html").read_text(encoding="utf-8")
        assert "<script src=" not in page and "cdn.jsdelivr.net" not in page
        assert all(marker in page for marker in markers.values())
        charts = sorted(p.parent.name for p in (repo / "plots").glob("*/history.csv"))
        assert charts and all(f"plots/{c}/history.csv" in page for c in charts)
        assert page.count("vegaEmbed(") == len(charts)
