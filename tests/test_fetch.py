"""Fetching the archive: source order, local and http sources, retries, and clean failures.

The only network used is a real http.server on 127.0.0.1 that each test starts and stops.
"""

from __future__ import annotations

import collections
import http.server
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from conftest import PROJECT_ROOT, run, tool_env

from ptblm.fetch import SOURCE_ENV, FetchError, candidate_sources, fetch_archive

PAYLOAD = bytes(range(256)) * 1200  # 300 KiB: several chunks, a progress bar with a size
FAST = {"timeout_s": 5.0, "retries": 1, "backoff_s": 0.0}


class Handler(http.server.BaseHTTPRequestHandler):
    """Behaviour by path: /ok, /flaky<n> (n 500s first), /500, /short, /garbage, /slow."""

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        server = self.server
        server.hits[self.path] += 1
        if self.path == "/ok" or (
            self.path.startswith("/flaky") and server.hits[self.path] > int(self.path[6:])
        ):
            self.send_response(200)
            self.send_header("Content-Length", str(len(PAYLOAD)))
            self.end_headers()
            self.wfile.write(PAYLOAD)
        elif self.path == "/short":
            self.send_response(200)
            self.send_header("Content-Length", str(len(PAYLOAD)))
            self.end_headers()
            self.wfile.write(PAYLOAD[:1000])
            self.close_connection = True
        elif self.path == "/garbage":
            self.wfile.write(b"this is not http\r\n\r\n")
            self.close_connection = True
        elif self.path == "/slow":
            server.release.wait(10)
        else:
            self.send_error(500 if self.path != "/missing" else 404)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server() -> Iterator[http.server.ThreadingHTTPServer]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.hits = collections.Counter()
    httpd.release = threading.Event()
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.release.set()
    httpd.shutdown()
    httpd.server_close()
    thread.join(5)


@pytest.fixture
def closed_port_url() -> str:
    """A loopback URL where nothing listens: connecting is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/simple-examples.tgz"


@pytest.fixture
def local_copy(tmp_path: Path) -> Path:
    path = tmp_path / "src" / "copy.tgz"
    path.parent.mkdir()
    path.write_bytes(PAYLOAD)
    return path


def assert_nothing_at(dest: Path) -> None:
    assert not dest.exists()
    assert not dest.parent.exists() or list(dest.parent.iterdir()) == []


def test_env_source_comes_first(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SOURCE_ENV, " /mirror/a.tgz ")
    assert candidate_sources(("http://x/a.tgz", "/mirror/a.tgz", "b.tgz")) == [
        "/mirror/a.tgz",
        "http://x/a.tgz",
        "b.tgz",
    ]
    monkeypatch.delenv(SOURCE_ENV)
    assert candidate_sources(("http://x/a.tgz", "b.tgz")) == ["http://x/a.tgz", "b.tgz"]
    monkeypatch.setenv(SOURCE_ENV, "")
    assert candidate_sources(("http://x/a.tgz",)) == ["http://x/a.tgz"]


def test_env_source_wins_over_params_sources(
    tmp_path: Path, local_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = tmp_path / "other.tgz"
    other.write_bytes(b"the params source")
    monkeypatch.setenv(SOURCE_ENV, str(local_copy))
    dest = tmp_path / "raw" / "a.tgz"
    used = fetch_archive(candidate_sources((str(other),)), dest, **FAST)
    assert used == str(local_copy)
    assert dest.read_bytes() == PAYLOAD


def test_falls_back_to_the_next_source(tmp_path: Path, local_copy: Path, server) -> None:
    dest = tmp_path / "raw" / "a.tgz"
    sources = [str(tmp_path / "nope.tgz"), f"{server.url}/missing", local_copy.as_uri()]
    assert fetch_archive(sources, dest, **FAST) == local_copy.as_uri()
    assert dest.read_bytes() == PAYLOAD


def test_plain_path(tmp_path: Path, local_copy: Path) -> None:
    dest = tmp_path / "raw" / "a.tgz"
    assert fetch_archive([str(local_copy)], dest, **FAST) == str(local_copy)
    assert dest.read_bytes() == PAYLOAD
    assert os.listdir(dest.parent) == ["a.tgz"]


def test_file_url(tmp_path: Path, local_copy: Path) -> None:
    dest = tmp_path / "raw" / "a.tgz"
    url = local_copy.as_uri()
    assert url.startswith("file:///")
    assert fetch_archive([url], dest, **FAST) == url
    assert dest.read_bytes() == PAYLOAD


def test_http_download_with_progress_bar(tmp_path: Path, server, capsys) -> None:
    dest = tmp_path / "raw" / "a.tgz"
    url = f"{server.url}/ok"
    assert fetch_archive([url], dest, **FAST) == url
    assert dest.read_bytes() == PAYLOAD
    assert os.listdir(dest.parent) == ["a.tgz"]
    bar = capsys.readouterr().err
    assert "download: 100%" in bar
    assert "300k/300k" in bar  # the size, in KiB
    assert "<00:00" in bar  # elapsed<remaining: the ETA


def test_retries_with_backoff_then_succeeds(tmp_path: Path, server) -> None:
    dest = tmp_path / "raw" / "a.tgz"
    url = f"{server.url}/flaky2"
    start = time.monotonic()
    assert fetch_archive([url], dest, timeout_s=5, retries=3, backoff_s=0.2) == url
    elapsed = time.monotonic() - start
    assert server.hits["/flaky2"] == 3
    assert elapsed >= 0.2 + 0.4  # exponential: 0.2 s, then 0.4 s
    assert dest.read_bytes() == PAYLOAD


def test_gives_up_after_the_last_retry(tmp_path: Path, server) -> None:
    dest = tmp_path / "raw" / "a.tgz"
    with pytest.raises(FetchError) as info:
        fetch_archive([f"{server.url}/500"], dest, timeout_s=5, retries=2, backoff_s=0)
    assert server.hits["/500"] == 2
    assert f"{server.url}/500 (Internal Server Error)" in str(info.value)
    assert_nothing_at(dest)


def test_local_path_is_not_retried(tmp_path: Path) -> None:
    start = time.monotonic()
    with pytest.raises(FetchError, match="no such file"):
        fetch_archive(
            [str(tmp_path / "x.tgz")], tmp_path / "a.tgz", timeout_s=5, retries=3, backoff_s=10
        )
    assert time.monotonic() - start < 5


def test_unreachable_names_every_source(tmp_path: Path, closed_port_url: str) -> None:
    dest = tmp_path / "raw" / "a.tgz"
    missing = str(tmp_path / "absent.tgz")
    with pytest.raises(FetchError) as info:
        fetch_archive([missing, closed_port_url], dest, **FAST)
    message = str(info.value)
    assert "\n" not in message
    assert f"{missing} (no such file" in message
    assert f"{closed_port_url} (" in message and "refused" in message
    assert SOURCE_ENV in message  # says how to fix it
    assert_nothing_at(dest)


def test_short_body_leaves_nothing(tmp_path: Path, server) -> None:
    dest = tmp_path / "raw" / "a.tgz"
    with pytest.raises(FetchError, match=r"/short \(.*1000 of 307200 bytes"):
        fetch_archive([f"{server.url}/short"], dest, **FAST)
    assert_nothing_at(dest)


def test_short_body_keeps_an_older_complete_file(tmp_path: Path, server) -> None:
    dest = tmp_path / "raw" / "a.tgz"
    dest.parent.mkdir()
    dest.write_bytes(b"complete")
    with pytest.raises(FetchError):
        fetch_archive([f"{server.url}/short"], dest, **FAST)
    assert dest.read_bytes() == b"complete"
    assert os.listdir(dest.parent) == ["a.tgz"]


def test_not_http_is_a_clean_failure(tmp_path: Path, server) -> None:
    dest = tmp_path / "raw" / "a.tgz"
    with pytest.raises(FetchError, match="/garbage"):
        fetch_archive([f"{server.url}/garbage"], dest, **FAST)
    assert_nothing_at(dest)


def test_timeout(tmp_path: Path, server) -> None:
    dest = tmp_path / "raw" / "a.tgz"
    start = time.monotonic()
    with pytest.raises(FetchError, match="timed out"):
        fetch_archive([f"{server.url}/slow"], dest, timeout_s=0.3, retries=1, backoff_s=0)
    assert time.monotonic() - start < 5
    assert_nothing_at(dest)


def write_params(path: Path, sources: list[str]) -> Path:
    raw = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    raw["data"] = {"sources": sources, "timeout_s": 5, "retries": 1, "backoff_s": 0}
    path.write_text(yaml.safe_dump(raw))
    return path


def cli_fetch(tmp_path: Path, params: Path, out: Path, **env: str):
    return run(
        [
            sys.executable,
            str(PROJECT_ROOT / "stages" / "fetch.py"),
            "--params",
            str(params),
            "--out",
            str(out),
        ],
        cwd=tmp_path,
        env=tool_env(PROJECT_ROOT, **env),
        check=False,
        timeout=60,
    )


def test_cli_unreachable_fails_with_one_line(tmp_path: Path, closed_port_url: str) -> None:
    params = write_params(tmp_path / "params.yaml", [closed_port_url])
    out = tmp_path / "data" / "raw" / "simple-examples.tgz"
    missing = str(tmp_path / "absent.tgz")
    result = cli_fetch(tmp_path, params, out, **{SOURCE_ENV: missing})
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: could not fetch the PTB archive")
    assert missing in lines[0] and closed_port_url in lines[0]
    assert lines[0].index(missing) < lines[0].index(closed_port_url)  # the env source first
    assert_nothing_at(out)


def test_cli_fetches_from_the_env_source(tmp_path: Path, local_copy: Path, closed_port_url):
    params = write_params(tmp_path / "params.yaml", [closed_port_url])
    out = tmp_path / "data" / "raw" / "simple-examples.tgz"
    result = cli_fetch(tmp_path, params, out, **{SOURCE_ENV: str(local_copy)})
    assert result.returncode == 0, result.stderr
    assert out.read_bytes() == PAYLOAD
    assert f"from {local_copy}" in result.stdout
