"""Fetching the archive: source order, local and http sources, retries, clean failures, and
the fallback to hosts that serve the three text files.

The only network used is a real http.server on 127.0.0.1 that each test starts and stops.
"""

from __future__ import annotations

import collections
import functools
import hashlib
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
from conftest import PROJECT_ROOT, committed_params, run, tool_env

from ptblm.archive import PTB_MD5, extract_ptb
from ptblm.data import prepare
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


# --- the second source: hosts that serve the three text files ---------------------------------


class QuietFiles(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def ptb_texts(tmp_path_factory, shared_archive: Path) -> Path:
    """The three real PTB files (from the shared archive), as a file host serves them."""
    root = tmp_path_factory.mktemp("host")
    extract_ptb(shared_archive, root / "good")
    bad = root / "bad"
    bad.mkdir()
    for name in PTB_MD5:
        (bad / name).write_bytes((root / "good" / name).read_bytes())
    (bad / "ptb.valid.txt").write_bytes(b" an older copy \n")
    return root


@pytest.fixture
def file_host(ptb_texts: Path) -> Iterator[str]:
    """A loopback host: /good/ptb.*.txt are the real files, /bad/ has a wrong ptb.valid.txt."""
    handler = functools.partial(QuietFiles, directory=str(ptb_texts))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
    thread.join(5)


def test_archive_source_down_falls_back_to_the_files(
    tmp_path: Path, closed_port_url: str, file_host: str, capsys
) -> None:
    dest = tmp_path / "raw" / "simple-examples.tgz"
    used = fetch_archive([closed_port_url], dest, file_sources=[f"{file_host}/good/"], **FAST)
    assert used == f"{file_host}/good/ptb.{{train,valid,test}}.txt"
    assert os.listdir(dest.parent) == [dest.name]  # no temp files left
    bars = capsys.readouterr().err
    for name in PTB_MD5:
        assert f"download {name}: 100%" in bars
    assert extract_ptb(dest, tmp_path / "ptb") == PTB_MD5  # what the extract stage checks
    first = dest.read_bytes()
    fetch_archive([closed_port_url], dest, file_sources=[f"{file_host}/good"], **FAST)
    assert dest.read_bytes() == first  # packed reproducibly: DVC sees an unchanged output


def test_a_wrong_file_moves_on_to_the_next_file_source(
    tmp_path: Path, closed_port_url: str, file_host: str
) -> None:
    dest = tmp_path / "raw" / "a.tgz"
    bases = [f"{file_host}/bad", f"{file_host}/good"]
    used = fetch_archive([closed_port_url], dest, file_sources=bases, **FAST)
    assert used.startswith(f"{file_host}/good/")
    with pytest.raises(FetchError) as info:
        fetch_archive([closed_port_url], dest, file_sources=bases[:1], **FAST)
    wrong = hashlib.md5(b" an older copy \n").hexdigest()
    assert f"{file_host}/bad/ptb.valid.txt (MD5 mismatch, expected " in str(info.value)
    assert wrong in str(info.value)
    assert extract_ptb(dest, tmp_path / "ptb") == PTB_MD5  # the good copy was kept


def test_the_archive_source_still_comes_first(
    tmp_path: Path, local_copy: Path, file_host: str
) -> None:
    dest = tmp_path / "raw" / "a.tgz"
    used = fetch_archive([str(local_copy)], dest, file_sources=[f"{file_host}/good"], **FAST)
    assert used == str(local_copy)
    assert dest.read_bytes() == PAYLOAD


def write_params(path: Path, sources: list[str], file_sources: list[str] | None = None) -> Path:
    raw = committed_params()
    raw["data"] = {"sources": sources, "timeout_s": 5, "retries": 1, "backoff_s": 0}
    raw["data"]["file_sources"] = file_sources or []
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


def stage(tmp_path: Path, name: str, *args: str):
    return run(
        [sys.executable, str(PROJECT_ROOT / "stages" / f"{name}.py"), *args],
        cwd=tmp_path,
        env=tool_env(PROJECT_ROOT),
        timeout=120,
    )


def test_cli_file_source_gives_the_same_data_and_arrays(
    tmp_path: Path, closed_port_url: str, file_host: str, shared_archive: Path
) -> None:
    """Archive host down: fetch -> extract -> prepare from the file host give exactly what the
    archive gives."""
    params = write_params(tmp_path / "params.yaml", [closed_port_url], [f"{file_host}/good"])
    out = tmp_path / "data" / "raw" / "simple-examples.tgz"
    result = cli_fetch(tmp_path, params, out)
    assert result.returncode == 0, result.stderr
    assert f"from {file_host}/good/ptb.{{train,valid,test}}.txt" in result.stdout
    stage(tmp_path, "extract", "--archive", str(out), "--out", "data/ptb")
    stage(tmp_path, "prepare", "--text-dir", "data/ptb", "--out", "data/prepared")

    extract_ptb(shared_archive, tmp_path / "ref" / "ptb")
    prepare(tmp_path / "ref" / "ptb", tmp_path / "ref" / "prepared")
    for folder in ("ptb", "prepared"):
        ours, ref = tmp_path / "data" / folder, tmp_path / "ref" / folder
        assert sorted(os.listdir(ours)) == sorted(os.listdir(ref))
        for name in os.listdir(ref):
            assert (ours / name).read_bytes() == (ref / name).read_bytes(), f"{folder}/{name}"


def test_cli_every_source_down_names_each_in_one_line(tmp_path: Path, closed_port_url: str) -> None:
    files_down = closed_port_url.rsplit("/", 1)[0] + "/files"
    params = write_params(tmp_path / "params.yaml", [closed_port_url], [files_down])
    out = tmp_path / "data" / "raw" / "simple-examples.tgz"
    missing = str(tmp_path / "absent.tgz")
    result = cli_fetch(tmp_path, params, out, **{SOURCE_ENV: missing})
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: could not fetch the PTB archive")
    tried = [missing, closed_port_url, f"{files_down}/ptb.train.txt"]
    positions = [lines[0].index(f"{source} (") for source in tried]
    assert positions == sorted(positions)  # in the order they were tried
    assert_nothing_at(out)
