"""The data half of the pipeline end to end: the real `dvc repro prepare` on the shared archive."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import dvc, tool_env

from ptblm.archive import MEMBER_DIR, PTB_MD5
from ptblm.fetch import SOURCE_ENV

pytestmark = pytest.mark.e2e

TOKENS = {"train": 929_589, "valid": 73_760, "test": 82_430}


def repackage(original: Path, dest: Path) -> Path:
    """The same three files in a different tar.gz (other order, mtimes, level, an extra file)."""
    with tarfile.open(original, "r:gz") as tar:
        texts = {
            name: tar.extractfile(f"{MEMBER_DIR}/{name}").read()  # type: ignore[union-attr]
            for name in PTB_MD5
        }
    with tarfile.open(dest, "w:gz", compresslevel=1) as tar:
        for name in reversed(list(texts)):
            info = tarfile.TarInfo(f"{MEMBER_DIR}/{name}")
            info.size = len(texts[name])
            info.mtime = 1_700_000_000
            tar.addfile(info, io.BytesIO(texts[name]))
        readme = tarfile.TarInfo("simple-examples/README")
        readme.size = 6
        tar.addfile(readme, io.BytesIO(b"mirror"))
    return dest


def ran(output: str) -> set[str]:
    return {
        stage for stage in ("fetch", "extract", "prepare") if f"Running stage '{stage}'" in output
    }


def test_repro_prepare_on_the_shared_archive(project: Path, shared_archive: Path, tmp_path):
    env = tool_env(project, **{SOURCE_ENV: str(shared_archive)})
    first = dvc(project, "repro", "prepare", env=env, timeout=300)
    assert ran(first.stdout) == {"fetch", "extract", "prepare"}
    assert "Running stage 'train'" not in first.stdout

    prepared = project / "data" / "prepared"
    meta = json.loads((prepared / "meta.json").read_text(encoding="utf-8"))
    metrics = json.loads((project / "metrics" / "prepare.json").read_text(encoding="utf-8"))
    assert metrics == {
        "vocab_size": 10_000,
        "tokens": TOKENS,
        "oov": {"train": 0, "valid": 0, "test": 0},
    }
    assert {k: meta[k] for k in metrics} == metrics
    vocab = (prepared / "vocab.txt").read_text(encoding="utf-8").splitlines()
    assert len(vocab) == len(set(vocab)) == 10_000
    assert vocab[:5] == ["the", "<unk>", "<eos>", "N", "of"]
    for split, count in TOKENS.items():
        ids = np.load(prepared / f"{split}.npy", allow_pickle=False)
        assert ids.shape == (count,) and int(ids.max()) < 10_000
    assert (prepared / "train.npy").stat().st_size < 2 * TOKENS["train"] + 1024  # 2-byte ids

    shown = dvc(project, "metrics", "show", env=env).stdout
    assert "metrics/prepare.json" in shown
    for fragment in ("tokens.train", "929589", "tokens.valid", "73760", "vocab_size", "10000"):
        assert fragment in shown

    stamp = (prepared / "train.npy").stat().st_mtime_ns
    again = dvc(project, "repro", "prepare", env=env, timeout=300)
    assert ran(again.stdout) == set()
    assert "Stage 'prepare' didn't change" in again.stdout
    assert (prepared / "train.npy").stat().st_mtime_ns == stamp

    # another source with the same three files: fetch and extract run, prepare does not
    mirror = repackage(shared_archive, tmp_path / "mirror.tgz")
    params = yaml.safe_load((project / "params.yaml").read_text(encoding="utf-8"))
    params["data"]["sources"] = [str(mirror)]
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False), "utf-8")
    third = dvc(project, "repro", "prepare", env=tool_env(project), timeout=300)
    assert ran(third.stdout) == {"fetch", "extract"}
    assert "Stage 'prepare' didn't change" in third.stdout
    assert (project / "data" / "raw" / "simple-examples.tgz").read_bytes() == mirror.read_bytes()
    assert (prepared / "train.npy").stat().st_mtime_ns == stamp
    assert json.loads((project / "metrics" / "prepare.json").read_text("utf-8")) == metrics


def test_repro_fails_cleanly_on_a_broken_source(project: Path, tmp_path: Path) -> None:
    bad = tmp_path / "broken.tgz"
    bad.write_bytes(b"\x1f\x8b\x08\x00 not really gzip")
    result = dvc(
        project,
        "repro",
        "prepare",
        env=tool_env(project, **{SOURCE_ENV: str(bad)}),
        check=False,
        timeout=300,
    )
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "corrupt or truncated archive" in output
    assert not (project / "data" / "ptb").exists()
    assert not (project / "data" / "prepared").exists()
