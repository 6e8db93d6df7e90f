"""The downloader against a local server that drops, lies and refuses, as real links do."""

from __future__ import annotations

import errno
import hashlib
import socket
from pathlib import Path

import pytest
from httpserver import FileServer

from vidcli import download as dl
from vidcli import httprange
from vidcli.download import download, partial_paths
from vidcli.errors import VidcliError

PAYLOAD = bytes(range(256)) * 800  # 204800 bytes
MD5 = hashlib.md5(PAYLOAD).hexdigest()
SHA256 = hashlib.sha256(PAYLOAD).hexdigest()


@pytest.fixture(autouse=True)
def _no_backoff(monkeypatch):
    monkeypatch.setattr(httprange, "BACKOFF", 0)


@pytest.fixture
def server():
    with FileServer({"/data.bin": PAYLOAD}) as srv:
        srv.chunk = 8192
        yield srv


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_download_verifies_and_leaves_only_the_final_file(server, tmp_path):
    dest = tmp_path / "sub" / "data.bin"
    got = download(server.url("/data.bin"), dest, md5=MD5, sha256=SHA256)
    assert got == dest and dest.read_bytes() == PAYLOAD
    assert _leftovers(dest.parent) == ["data.bin"]
    assert [r.range for r in server.gets()] == [None]


def test_existing_file_with_right_checksum_is_not_fetched_again(server, tmp_path):
    dest = tmp_path / "data.bin"
    dest.write_bytes(PAYLOAD)
    download(server.url("/data.bin"), dest, md5=MD5.upper())
    assert server.gets() == []


def test_existing_file_with_wrong_checksum_is_replaced(server, tmp_path):
    dest = tmp_path / "data.bin"
    dest.write_bytes(b"stale")
    download(server.url("/data.bin"), dest, md5=MD5)
    assert dest.read_bytes() == PAYLOAD and len(server.gets()) == 1


def test_checksum_mismatch_removes_the_file_and_names_both_digests(server, tmp_path):
    dest = tmp_path / "data.bin"
    wrong = "0" * 32
    with pytest.raises(VidcliError) as info:
        download(server.url("/data.bin"), dest, md5=wrong)
    message = str(info.value)
    assert "data.bin" in message and wrong in message and MD5 in message
    assert info.value.exit_code == 2
    assert _leftovers(tmp_path) == []


def test_corrupted_transfer_fails_its_sha256(server, tmp_path):
    server.corrupt.add("/data.bin")
    with pytest.raises(VidcliError, match="sha256"):
        download(server.url("/data.bin"), tmp_path / "data.bin", sha256=SHA256)
    assert _leftovers(tmp_path) == []


def test_dropped_connection_is_resumed_with_a_range_request(server, tmp_path):
    server.drop_after, server.drops = 50_000, 2
    dest = tmp_path / "data.bin"
    download(server.url("/data.bin"), dest, md5=MD5)
    assert dest.read_bytes() == PAYLOAD
    gets = server.gets()
    assert [r.range for r in gets] == [None, "bytes=50000-", "bytes=100000-"]
    assert [r.status for r in gets] == [200, 206, 206]
    assert gets[1].headers.get("If-Range", "").startswith('"')
    assert _leftovers(tmp_path) == ["data.bin"]


def test_interrupted_download_resumes_on_the_next_call(server, tmp_path):
    server.drop_after, server.drops = 60_000, 1
    dest = tmp_path / "data.bin"
    with pytest.raises(VidcliError, match="interrupted") as info:
        download(server.url("/data.bin"), dest, md5=MD5, retries=0)
    assert info.value.exit_code == 1 and server.url("/data.bin") in str(info.value)
    partial, meta = partial_paths(dest)
    assert not dest.exists() and partial.stat().st_size == 60_000 and meta.is_file()
    download(server.url("/data.bin"), dest, md5=MD5)
    assert dest.read_bytes() == PAYLOAD
    assert server.gets()[-1].range == "bytes=60000-" and server.gets()[-1].status == 206
    assert _leftovers(tmp_path) == ["data.bin"]


def _interrupt(server: FileServer, dest: Path, at: int) -> None:
    server.drop_after, server.drops = at, 1
    with pytest.raises(VidcliError):
        download(server.url("/data.bin"), dest, retries=0)
    assert partial_paths(dest)[0].stat().st_size == at


def test_server_without_range_support_restarts_cleanly(server, tmp_path):
    dest = tmp_path / "data.bin"
    _interrupt(server, dest, 30_000)
    server.ranges = False
    download(server.url("/data.bin"), dest, md5=MD5)
    assert dest.read_bytes() == PAYLOAD
    last = server.gets()[-1]
    assert last.range == "bytes=30000-" and last.status == 200


@pytest.mark.parametrize("etag", [True, False])
def test_changed_file_on_the_server_restarts_the_download(server, tmp_path, etag):
    dest = tmp_path / "data.bin"
    server.etag = etag
    _interrupt(server, dest, 30_000)
    new = PAYLOAD + b"more"
    server.files["/data.bin"] = new
    download(server.url("/data.bin"), dest, md5=hashlib.md5(new).hexdigest())
    assert dest.read_bytes() == new


def test_same_size_change_without_etag_is_caught_by_the_checksum_and_refetched(server, tmp_path):
    dest = tmp_path / "data.bin"
    server.etag = False
    _interrupt(server, dest, 30_000)
    new = PAYLOAD[::-1]
    server.files["/data.bin"] = new
    download(server.url("/data.bin"), dest, md5=hashlib.md5(new).hexdigest())
    assert dest.read_bytes() == new
    assert [r.range for r in server.gets()[-2:]] == ["bytes=30000-", None]


def test_complete_partial_is_finished_without_refetching(server, tmp_path):
    dest = tmp_path / "data.bin"
    _interrupt(server, dest, 30_000)
    partial, _ = partial_paths(dest)
    partial.write_bytes(PAYLOAD)
    download(server.url("/data.bin"), dest, md5=MD5)
    assert dest.read_bytes() == PAYLOAD and server.gets()[-1].status == 416


@pytest.mark.parametrize(("code", "exit_code", "tries"), [(404, 2, 1), (403, 2, 1), (500, 1, 4), (429, 1, 4)])
def test_http_errors_fail_with_the_url(server, tmp_path, code, exit_code, tries):
    """A 4xx is the URL's fault (bad input, not retried); a 5xx or 429 is retried, then the job failed."""
    server.status["/data.bin"] = code
    url = server.url("/data.bin")
    with pytest.raises(VidcliError) as info:
        download(url, tmp_path / "data.bin")
    assert info.value.exit_code == exit_code and len(server.gets()) == tries
    assert url in str(info.value) and str(code) in str(info.value) and "\n" not in str(info.value)
    assert _leftovers(tmp_path) == []


def test_connection_refused_fails_with_the_url(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/x.bin"
    with pytest.raises(VidcliError) as info:
        download(url, tmp_path / "x.bin")
    assert url in str(info.value) and str(info.value).endswith("Connection refused")


def test_timeout_fails_with_the_url(server, tmp_path):
    server.stall = 1.5
    url = server.url("/data.bin")
    with pytest.raises(VidcliError) as info:
        download(url, tmp_path / "data.bin", timeout=0.3)
    assert url in str(info.value) and "0.3 s" in str(info.value)


def test_disk_full_is_one_line_and_leaves_no_final_file(server, tmp_path, monkeypatch):
    class Full:
        def write(self, data: bytes) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

        def close(self) -> None:
            pass

    monkeypatch.setattr(dl, "_open_partial", lambda path, mode: Full())
    dest = tmp_path / "data.bin"
    with pytest.raises(VidcliError) as info:
        download(server.url("/data.bin"), dest, md5=MD5)
    assert "No space left on device" in str(info.value) and "data.bin.partial" in str(info.value)
    assert not dest.exists()


def test_unwritable_destination_is_a_clean_error(server, tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a folder")
    with pytest.raises(VidcliError, match="cannot create"):
        download(server.url("/data.bin"), blocker / "data.bin")


def test_local_path_and_file_url_are_copied_and_verified(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(PAYLOAD)
    a = download(str(src), tmp_path / "out" / "a.bin", md5=MD5)
    b = download(src.as_uri(), tmp_path / "out" / "b.bin", sha256=SHA256)
    assert a.read_bytes() == PAYLOAD and b.read_bytes() == PAYLOAD
    with pytest.raises(VidcliError, match="checksum mismatch"):
        download(src.as_uri(), tmp_path / "out" / "c.bin", md5="f" * 32)
    assert _leftovers(tmp_path / "out") == ["a.bin", "b.bin"]
    with pytest.raises(VidcliError, match="not found"):
        download(str(tmp_path / "missing.bin"), tmp_path / "out" / "d.bin")


def test_unsupported_scheme_is_bad_input(tmp_path):
    with pytest.raises(VidcliError, match="ftp") as info:
        download("ftp://example.org/x", tmp_path / "x")
    assert info.value.exit_code == 2


def test_server_serves_suffix_ranges_and_head():
    """The helper itself: what the remote-zip reader relies on."""
    import requests

    with FileServer({"/z": PAYLOAD}) as srv:
        head = requests.head(srv.url("/z"), timeout=5)
        tail = requests.get(srv.url("/z"), headers={"Range": "bytes=-100"}, timeout=5)
        mid = requests.get(srv.url("/z"), headers={"Range": "bytes=10-19"}, timeout=5)
        bad = requests.get(srv.url("/z"), headers={"Range": f"bytes={len(PAYLOAD)}-"}, timeout=5)
    assert head.headers["Content-Length"] == str(len(PAYLOAD)) and head.headers["Accept-Ranges"] == "bytes"
    assert tail.status_code == 206 and tail.content == PAYLOAD[-100:]
    assert tail.headers["Content-Range"] == f"bytes {len(PAYLOAD) - 100}-{len(PAYLOAD) - 1}/{len(PAYLOAD)}"
    assert mid.content == PAYLOAD[10:20]
    assert bad.status_code == 416 and bad.headers["Content-Range"] == f"bytes */{len(PAYLOAD)}"


def test_redirect_is_followed_and_a_loop_is_one_line(server, tmp_path):
    server.redirects["/moved.bin"] = "/data.bin"
    assert download(server.url("/moved.bin"), tmp_path / "a.bin", md5=MD5).read_bytes() == PAYLOAD
    server.redirects["/loop.bin"] = "/loop.bin"
    with pytest.raises(VidcliError, match="too many redirects") as info:
        download(server.url("/loop.bin"), tmp_path / "b.bin")
    assert info.value.exit_code == 1 and _leftovers(tmp_path) == ["a.bin"]


def test_content_length_longer_than_the_body_fails_and_keeps_no_final_file(server, tmp_path):
    """The server claims 100 bytes more than it sends: every try ends short, so the job fails (exit 1)."""
    server.length_delta = 100
    with pytest.raises(VidcliError, match="interrupted") as info:
        download(server.url("/data.bin"), tmp_path / "data.bin", md5=MD5)
    assert info.value.exit_code == 1 and not (tmp_path / "data.bin").exists()
    server.length_delta = 0
    assert download(server.url("/data.bin"), tmp_path / "data.bin", md5=MD5).read_bytes() == PAYLOAD


def test_transient_5xx_is_retried_with_backoff_then_succeeds(server, tmp_path, monkeypatch):
    waits = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        server.status.clear()  # the server is back

    monkeypatch.setattr(httprange, "BACKOFF", 0.5)
    monkeypatch.setattr(httprange.time, "sleep", sleep)
    server.status["/data.bin"] = 503
    download(server.url("/data.bin"), tmp_path / "data.bin", md5=MD5)
    assert [r.status for r in server.gets()] == [503, 200] and waits == [0.5]
