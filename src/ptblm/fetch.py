"""Download the PTB archive from the first source that works."""

from __future__ import annotations

import http.client
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

from tqdm import tqdm

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


def _fetch_once(source: str, dest: Path, timeout_s: float) -> None:
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
        _copy_with_progress(response.read, total, dest, "download")
        if total is not None and dest.stat().st_size != total:
            raise OSError(f"truncated: got {dest.stat().st_size} of {total} bytes")


def fetch_archive(
    sources: list[str], dest: Path, *, timeout_s: float, retries: int, backoff_s: float
) -> str:
    """Fetch to `dest` from the first working source; return the source used.

    Network sources get `retries` tries with exponential back-off; a local path
    that does not exist fails at once. Nothing lands at `dest` unless complete.
    """
    failures: list[str] = []
    for source in sources:
        tries = 1 if _local_path(source) is not None else retries
        for attempt in range(1, tries + 1):
            try:
                with atomic_path(dest) as tmp:
                    _fetch_once(source, tmp, timeout_s)
                return source
            except (OSError, http.client.HTTPException, ValueError) as exc:
                reason = getattr(exc, "reason", None) or exc
                if attempt == tries:
                    failures.append(f"{source} ({reason})")
                else:
                    time.sleep(backoff_s * 2 ** (attempt - 1))
    raise FetchError(
        "could not fetch the PTB archive; tried: "
        + "; ".join(failures)
        + f". Set {SOURCE_ENV} to a local copy or a reachable URL."
    )
