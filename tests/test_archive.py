"""Extraction of the three PTB files: real tar.gz archives, hostile and broken ones included."""

from __future__ import annotations

import hashlib
import io
import sys
import tarfile
from pathlib import Path

import pytest
from conftest import PROJECT_ROOT, run, tool_env

from ptblm.archive import MEMBER_DIR, PTB_MD5, ArchiveError, extract_ptb

TEXTS = {
    "ptb.train.txt": b" the cat sat \n the dog \n",
    "ptb.valid.txt": b" the cat \n",
    "ptb.test.txt": b" a dog \n",
}
SUMS = {name: hashlib.md5(data).hexdigest() for name, data in TEXTS.items()}


def add_file(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def add_special(tar: tarfile.TarFile, name: str, kind: bytes, linkname: str = "") -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    tar.addfile(info)


def make_archive(path: Path, texts: dict[str, bytes] = TEXTS, extra=None, first=None) -> Path:
    """A simple-examples-like tar.gz; `first`/`extra` add members before/after the three."""
    with tarfile.open(path, "w:gz") as tar:
        if first:
            first(tar)
        for name, data in texts.items():
            add_file(tar, f"{MEMBER_DIR}/{name}", data)
        if extra:
            extra(tar)
    return path


def files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if not p.is_dir()}


def cli_extract(archive: Path, out: Path) -> tuple[int, str]:
    result = run(
        [
            sys.executable,
            str(PROJECT_ROOT / "stages" / "extract.py"),
            "--archive",
            str(archive),
            "--out",
            str(out),
        ],
        cwd=out.parent.parent,
        env=tool_env(PROJECT_ROOT),
        check=False,
    )
    return result.returncode, result.stderr


def assert_refused(archive: Path, tmp_path: Path, *fragments: str, checksums=SUMS) -> None:
    """extract_ptb and the CLI both refuse with one clear line and write nothing at all."""
    before = files_under(tmp_path)
    out = tmp_path / "out" / "ptb"
    with pytest.raises(ArchiveError) as info:
        extract_ptb(archive, out, checksums)
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message
    assert not out.exists()
    assert files_under(tmp_path) == before
    if checksums is PTB_MD5:  # the CLI always checks the pinned sums
        code, stderr = cli_extract(archive, out)
        assert code != 0
        assert stderr.strip().splitlines() == [f"Error: {message}"]
        assert not out.exists()
        assert files_under(tmp_path) == before


def test_good_archive_extracts_the_three_files(tmp_path: Path) -> None:
    archive = make_archive(tmp_path / "a.tgz", extra=lambda t: add_file(t, "other/x.txt", b"x"))
    out = tmp_path / "ptb"
    assert extract_ptb(archive, out, SUMS) == SUMS
    assert {p.name: p.read_bytes() for p in out.iterdir()} == TEXTS
    assert files_under(tmp_path) == {"a.tgz", *(f"ptb/{n}" for n in TEXTS)}


def test_leading_dot_slash_members_are_accepted(tmp_path: Path) -> None:
    archive = tmp_path / "a.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        for name, data in TEXTS.items():
            add_file(tar, f"./{MEMBER_DIR}/{name}", data)
    assert extract_ptb(archive, tmp_path / "ptb", SUMS) == SUMS


def test_shared_archive_matches_the_pinned_md5s(tmp_path: Path, shared_archive: Path) -> None:
    out = tmp_path / "ptb"
    assert extract_ptb(shared_archive, out) == PTB_MD5
    sizes = {p.name: p.stat().st_size for p in out.iterdir()}
    assert sizes == {"ptb.train.txt": 5_101_618, "ptb.valid.txt": 399_782, "ptb.test.txt": 449_945}


def test_truncated_archive(tmp_path: Path, shared_archive: Path) -> None:
    archive = tmp_path / "truncated.tgz"
    archive.write_bytes(shared_archive.read_bytes()[:300_000])
    assert_refused(archive, tmp_path, str(archive), "corrupt or truncated", checksums=PTB_MD5)


def test_corrupt_gzip(tmp_path: Path) -> None:
    good = make_archive(tmp_path / "good.tgz").read_bytes()
    archive = tmp_path / "corrupt.tgz"
    middle = len(good) // 2
    archive.write_bytes(
        good[:middle] + bytes(b ^ 0xFF for b in good[middle : middle + 64]) + good[middle + 64 :]
    )
    (tmp_path / "good.tgz").unlink()
    assert_refused(archive, tmp_path, str(archive), "corrupt or truncated")


@pytest.mark.parametrize("content", [b"", b"<html>404 not found</html>\n"], ids=["empty", "html"])
def test_not_an_archive(tmp_path: Path, content: bytes) -> None:
    archive = tmp_path / "page.tgz"
    archive.write_bytes(content)
    assert_refused(archive, tmp_path, str(archive), "corrupt or truncated", checksums=PTB_MD5)


def test_missing_archive(tmp_path: Path) -> None:
    assert_refused(
        tmp_path / "none.tgz",
        tmp_path,
        "none.tgz: not found; run the fetch stage",
        checksums=PTB_MD5,
    )


def test_wrong_checksum_names_file_and_both_hashes(tmp_path: Path) -> None:
    texts = {**TEXTS, "ptb.valid.txt": b" the cat sat \n"}
    archive = make_archive(tmp_path / "a.tgz", texts)
    actual = hashlib.md5(texts["ptb.valid.txt"]).hexdigest()
    assert_refused(archive, tmp_path, "ptb.valid.txt", SUMS["ptb.valid.txt"], actual)


def test_wrong_checksum_against_pinned_sums_through_cli(tmp_path: Path) -> None:
    archive = make_archive(tmp_path / "a.tgz")
    # the first member in the archive is train: its pinned sum is the one reported
    assert_refused(
        archive,
        tmp_path,
        "ptb.train.txt",
        PTB_MD5["ptb.train.txt"],
        SUMS["ptb.train.txt"],
        checksums=PTB_MD5,
    )


def test_missing_member(tmp_path: Path) -> None:
    texts = {k: v for k, v in TEXTS.items() if k != "ptb.test.txt"}
    archive = make_archive(tmp_path / "a.tgz", texts)
    assert_refused(archive, tmp_path, f"no member {MEMBER_DIR}/ptb.test.txt")


def test_empty_archive(tmp_path: Path) -> None:
    archive = make_archive(tmp_path / "a.tgz", {})
    assert_refused(archive, tmp_path, "no member", checksums=PTB_MD5)


def test_dot_dot_member_is_refused_and_never_written(tmp_path: Path) -> None:
    archive = make_archive(tmp_path / "a.tgz", first=lambda t: add_file(t, "../evil", b"pwned"))
    assert_refused(archive, tmp_path, "'../evil'", "'..'", checksums=PTB_MD5)
    assert not (tmp_path / "evil").exists() and not (tmp_path.parent / "evil").exists()


def test_nested_dot_dot_member_is_refused(tmp_path: Path) -> None:
    name = f"{MEMBER_DIR}/../../../ptb.train.txt"
    archive = make_archive(tmp_path / "a.tgz", extra=lambda t: add_file(t, name, b"x"))
    assert_refused(archive, tmp_path, repr(name), "'..'")


def test_absolute_member_is_refused_and_never_written(tmp_path: Path) -> None:
    target = tmp_path / "outside" / "evil.txt"
    archive = make_archive(tmp_path / "a.tgz", first=lambda t: add_file(t, str(target), b"x"))
    assert_refused(archive, tmp_path, "absolute path", checksums=PTB_MD5)
    assert not target.exists()


def test_symlink_named_like_a_wanted_file(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("do not read me")
    texts = {k: v for k, v in TEXTS.items() if k != "ptb.train.txt"}

    def link(tar: tarfile.TarFile) -> None:
        add_special(tar, f"{MEMBER_DIR}/ptb.train.txt", tarfile.SYMTYPE, str(secret))

    archive = make_archive(tmp_path / "a.tgz", texts, first=link)
    assert_refused(archive, tmp_path, "ptb.train.txt", "is a link", checksums=PTB_MD5)


def test_hard_link_named_like_a_wanted_file(tmp_path: Path) -> None:
    def link(tar: tarfile.TarFile) -> None:
        add_special(tar, f"{MEMBER_DIR}/ptb.test.txt", tarfile.LNKTYPE, f"{MEMBER_DIR}/x")

    texts = {k: v for k, v in TEXTS.items() if k != "ptb.test.txt"}
    archive = make_archive(tmp_path / "a.tgz", texts, extra=link)
    assert_refused(archive, tmp_path, "ptb.test.txt", "is a link")


@pytest.mark.parametrize("kind", [tarfile.FIFOTYPE, tarfile.CHRTYPE, tarfile.BLKTYPE])
def test_device_or_fifo_named_like_a_wanted_file(tmp_path: Path, kind: bytes) -> None:
    def special(tar: tarfile.TarFile) -> None:
        add_special(tar, f"{MEMBER_DIR}/ptb.valid.txt", kind)

    texts = {k: v for k, v in TEXTS.items() if k != "ptb.valid.txt"}
    archive = make_archive(tmp_path / "a.tgz", texts, first=special)
    assert_refused(archive, tmp_path, "ptb.valid.txt", "not a regular file")


def test_links_and_devices_elsewhere_are_never_written(tmp_path: Path) -> None:
    def specials(tar: tarfile.TarFile) -> None:
        add_special(tar, "simple-examples/link", tarfile.SYMTYPE, "/etc/passwd")
        add_special(tar, "simple-examples/fifo", tarfile.FIFOTYPE)

    archive = make_archive(tmp_path / "a.tgz", extra=specials)
    assert extract_ptb(archive, tmp_path / "ptb", SUMS) == SUMS
    assert files_under(tmp_path) == {"a.tgz", *(f"ptb/{n}" for n in TEXTS)}


def test_failed_extract_keeps_nothing_of_a_partial_run(tmp_path: Path) -> None:
    # train and valid are fine and get written to the temp folder before test fails its sum
    texts = {**TEXTS, "ptb.test.txt": b" something else \n"}
    archive = make_archive(tmp_path / "a.tgz", texts)
    assert_refused(archive, tmp_path, "ptb.test.txt", "MD5 mismatch")
