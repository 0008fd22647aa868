"""Extract the three PTB text files from the archive, safely, and verify them."""

from __future__ import annotations

import hashlib
import tarfile
import zlib
from pathlib import Path, PurePosixPath

from .errors import PtblmError
from .fsutil import atomic_dir

MEMBER_DIR = "simple-examples/data"
# docs/reproduction.md, "Data": the three files are pinned, never the archive (mirrors
# repackage it).
PTB_MD5 = {
    "ptb.train.txt": "f26c4b92c5fdc7b3f8c7cdcb991d8420",
    "ptb.valid.txt": "aa0affc06ff7c36e977d7cd49e3839bf",
    "ptb.test.txt": "8b80168b89c18661a38ef683c0dc3721",
}


class ArchiveError(PtblmError):
    """The archive is broken, hostile, or not the PTB archive."""


def _unsafe_reason(member: tarfile.TarInfo) -> str | None:
    path = PurePosixPath(member.name)
    if path.is_absolute() or member.name.startswith("/"):
        return "has an absolute path"
    if ".." in path.parts:
        return "escapes the target folder with '..'"
    return None


def extract_ptb(
    archive: Path, out_dir: Path, checksums: dict[str, str] = PTB_MD5
) -> dict[str, str]:
    """Write ptb.{train,valid,test}.txt to `out_dir`; return their MD5s.

    Only those three regular files are ever written. Any member with an absolute
    or '..' path makes the whole archive suspect and is refused; a wanted member
    that is a link or device is refused too. Output appears only when all three
    files are present and match their checksums.
    """
    wanted = {f"{MEMBER_DIR}/{name}": name for name in checksums}
    found: dict[str, str] = {}
    try:
        with tarfile.open(archive, "r:*") as tar, atomic_dir(out_dir) as tmp:
            for member in tar:
                reason = _unsafe_reason(member)
                if reason:
                    raise ArchiveError(
                        f"{archive}: member {member.name!r} {reason}; refusing this archive"
                    )
                name = wanted.get(member.name.removeprefix("./"))
                if name is None:
                    continue
                if not member.isfile():
                    kind = "a link" if member.issym() or member.islnk() else "not a regular file"
                    raise ArchiveError(
                        f"{archive}: member {member.name!r} is {kind}; refusing this archive"
                    )
                digest = hashlib.md5()
                source = tar.extractfile(member)
                assert source is not None  # regular files always have data
                with open(tmp / name, "wb") as out:
                    while block := source.read(1 << 20):
                        digest.update(block)
                        out.write(block)
                actual = digest.hexdigest()
                if actual != checksums[name]:
                    raise ArchiveError(
                        f"{name}: MD5 mismatch, expected {checksums[name]}, got {actual}; "
                        "the archive is corrupt or not the PTB simple-examples archive"
                    )
                found[name] = actual
            missing = [m for m, name in wanted.items() if name not in found]
            if missing:
                raise ArchiveError(
                    f"{archive}: no member {missing[0]}; is this the PTB simple-examples archive?"
                )
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        if isinstance(exc, FileNotFoundError) and not Path(archive).exists():
            raise ArchiveError(f"{archive}: not found; run the fetch stage first") from None
        reason = " ".join(str(exc).split())  # tarfile.open lists one line per compression
        raise ArchiveError(
            f"{archive}: corrupt or truncated archive ({reason}); delete it and fetch again"
        ) from None
    return found
