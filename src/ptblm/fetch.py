"""Download the PTB archive from the first source that works.

Archive sources come first. When every one fails, file sources (hosts that serve the three
text files themselves, as torchtext downloads them) are tried, and the three files, checked
against their pinned MD5s, are packed into a fresh simple-examples.tgz: `extract` reads it
like the original, so the rest of the pipeline never knows which source was used.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.client
import os
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

from tqdm import tqdm

from .archive import MEMBER_DIR, PTB_MD5
from .errors import PtblmError
from .fsutil import atomic_path

SOURCE_ENV = "PTBLM_DATA_SOURCE"
CHUNK = 1 << 16


class FetchError(PtblmError):
    """Every source failed; the message lists each one and why."""


def candidate_sources(configured: tuple[str, ...] | list[str]) -> list[str]:
    """$PTBLM_DATA_SOURCE first (when set), then the sources from params.yaml."""
    env = os.environ.get(SOURCE_ENV, "").strip()
    return ([env] if env else []) + [s for s in configured if s != env]


def _local_path(source: str) -> Path | None:
    parsed = urllib.parse.urlparse(source)
    if parsed.scheme == "file":
        return Path(urllib.request.url2pathname(parsed.path))
    if len(parsed.scheme) <= 1:  # a plain path (or a Windows drive letter)
        return Path(source)
    return None


def _copy_with_progress(read: Callable[[int], bytes], total: int | None, dest: Path, label: str):
    with (
        open(dest, "wb") as out,
        tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=label) as bar,
    ):
        while chunk := read(CHUNK):
            out.write(chunk)
            bar.update(len(chunk))


def _fetch_once(source: str, dest: Path, timeout_s: float, label: str = "download") -> None:
    local = _local_path(source)
    if local is not None:
        if not local.is_file():
            raise FileNotFoundError(f"no such file {local}")
        with open(local, "rb") as src:
            _copy_with_progress(src.read, local.stat().st_size, dest, f"copy {local.name}")
        return
    request = urllib.request.Request(source, headers={"User-Agent": "ptb-lm"})
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        _copy_with_progress(response.read, total, dest, label)
        if total is not None and dest.stat().st_size != total:
            raise OSError(f"truncated: got {dest.stat().st_size} of {total} bytes")


def _with_retries(source: str, tries: int, backoff_s: float, action: Callable[[], None]) -> str:
    """Run `action` up to `tries` times, backing off exponentially; return "" on success,
    else the last failure as "source (reason)"."""
    attempt = 1
    while True:
        try:
            action()
            return ""
        except (OSError, http.client.HTTPException, ValueError) as exc:
            if attempt >= tries:
                return f"{source} ({getattr(exc, 'reason', None) or exc})"
            time.sleep(backoff_s * 2 ** (attempt - 1))
            attempt += 1


def _tries(source: str, retries: int) -> int:
    """A local path that does not exist will not appear on a second try."""
    return 1 if _local_path(source) is not None else retries


def _download_archive(source: str, dest: Path, timeout_s: float) -> None:
    with atomic_path(dest) as tmp:
        _fetch_once(source, tmp, timeout_s)


def _download_text(url: str, path: Path, md5: str, timeout_s: float) -> None:
    """One of the three files; a wrong one (an error page, another version) is a failure."""
    _fetch_once(url, path, timeout_s, label=f"download {path.name}")
    with open(path, "rb") as f:
        actual = hashlib.file_digest(f, "md5").hexdigest()
    if actual != md5:
        raise ValueError(f"MD5 mismatch, expected {md5}, got {actual}")


def _pack(text_dir: Path, dest: Path) -> None:
    """simple-examples.tgz holding just the three files under their usual member names,
    byte-for-byte the same every time (no times, owners or temp names), so DVC sees an
    unchanged output when the files are fetched again."""
    with (
        open(dest, "wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.USTAR_FORMAT) as tar,
    ):
        for name in PTB_MD5:
            info = tarfile.TarInfo(f"{MEMBER_DIR}/{name}")
            info.size = (text_dir / name).stat().st_size
            info.mode = 0o644
            with open(text_dir / name, "rb") as data:
                tar.addfile(info, data)


def _fetch_files(base: str, dest: Path, *, timeout_s: float, retries: int, backoff_s: float) -> str:
    """Download ptb.{train,valid,test}.txt from `base`, check each against its pinned MD5 and
    pack them into `dest`; return "" on success, else the failing file as "url (reason)"."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{dest.name}.", dir=dest.parent) as tmp:
        for name, md5 in PTB_MD5.items():
            url = f"{base.rstrip('/')}/{name}"
            download = functools.partial(_download_text, url, Path(tmp) / name, md5, timeout_s)
            failure = _with_retries(url, _tries(url, retries), backoff_s, download)
            if failure:
                return failure
        with atomic_path(dest) as packed:
            _pack(Path(tmp), packed)
    return ""


def fetch_archive(
    sources: list[str],
    dest: Path,
    *,
    timeout_s: float,
    retries: int,
    backoff_s: float,
    file_sources: tuple[str, ...] | list[str] = (),
) -> str:
    """Fetch to `dest` from the first working source; return the source used.

    Archive `sources` first, then `file_sources` (base URLs of the three text files, packed
    into an archive here). Network sources get `retries` tries with exponential back-off; a
    local path that does not exist fails at once. Nothing lands at `dest` unless complete.
    """
    failures: list[str] = []
    for source in sources:
        download = functools.partial(_download_archive, source, dest, timeout_s)
        failure = _with_retries(source, _tries(source, retries), backoff_s, download)
        if not failure:
            return source
        failures.append(failure)
    for base in file_sources:
        failure = _fetch_files(
            base, dest, timeout_s=timeout_s, retries=retries, backoff_s=backoff_s
        )
        if not failure:
            return f"{base.rstrip('/')}/ptb.{{train,valid,test}}.txt"
        failures.append(failure)
    raise FetchError(
        "could not fetch the PTB archive; tried: "
        + "; ".join(failures)
        + f". Set {SOURCE_ENV} to a local copy or a reachable URL."
    )
