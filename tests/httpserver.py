"""A small HTTP file server on 127.0.0.1 for tests of code that downloads, with knobs to make it misbehave.

Tests must not touch the network, yet downloaders need a real socket to show their resume, range and
error paths. `FileServer` runs a threaded `http.server` in the background and serves bytes from a dict
(URL path -> bytes) or a folder. It speaks HTTP/1.1 with keep-alive, answers HEAD and GET, sends
Content-Length, Accept-Ranges and an ETag, and honours `Range: bytes=a-b`, `a-` and `-n`
(one range; several ranges get the whole file with 200, which HTTP allows) and `If-Range`.

Usage (tests/ is on sys.path under pytest's default import mode, so import it as a top-level module):

    from httpserver import FileServer

    with FileServer({"/data.bin": payload}) as server:
        server.drop_after, server.drops = 1000, 1     # cut the next GET after 1000 body bytes
        download(server.url("/data.bin"), dest)
        assert server.requests[-1].range == "bytes=1000-"

Knobs (plain attributes; change them at any time, also between requests):
    ranges         False: ignore Range and If-Range, answer 200 with the whole body, `Accept-Ranges: none`
    suffix_ranges  False: treat `bytes=-n` as unsupported (whole body, 200)
    etag           False: send no ETag (If-Range is then ignored)
    status         {path: code}: answer that status (404, 500, 503 ...) with a short body
    drop_after     cut the connection after this many body bytes of a GET ...
    drops          ... for this many responses (None: every one); each cut counts down
    corrupt        set of paths whose served bytes get one byte flipped (length unchanged)
    stall          seconds to sleep before answering (to provoke client timeouts)
    chunk          bytes per write; small values make drops land mid-stream
    redirects      {path: target}: answer 302 with `Location: target` (a path or a full URL)
    length_delta   added to every Content-Length sent with a body (a server that lies about its
                   length); the connection is closed after such a body

`requests` records every request (method, path, Range header, status, headers) for assertions;
`errors` collects exceptions raised while serving (mostly clients that hung up), instead of printing them.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import socket
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


@dataclass
class Request:
    method: str
    path: str
    range: str | None
    status: int
    headers: dict[str, str] = field(default_factory=dict)


class FileServer:
    """Serves `files` (a mapping of URL path to bytes, or a folder) on 127.0.0.1 from a background thread."""

    def __init__(self, files: Mapping[str, bytes] | Path | str | None = None, *, ranges: bool = True) -> None:
        self.files: dict[str, bytes] = {}
        self.root: Path | None = None
        if isinstance(files, (str, Path)):
            self.root = Path(files)
        elif files is not None:
            self.files = {_norm(k): v for k, v in files.items()}
        self.ranges = ranges
        self.suffix_ranges = True
        self.etag = True
        self.status: dict[str, int] = {}
        self.drop_after: int | None = None
        self.drops: int | None = 1
        self.corrupt: set[str] = set()
        self.stall = 0.0
        self.chunk = 16 * 1024
        self.redirects: dict[str, str] = {}
        self.length_delta = 0
        self.requests: list[Request] = []
        self.errors: list[BaseException] = []
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> FileServer:
        handler = type("BoundHandler", (_Handler,), {"owner": self})
        self._httpd = _Server(("127.0.0.1", 0), handler)
        self._httpd.owner = self
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> FileServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._httpd is not None, "server not started"
        return self._httpd.server_address[1]

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{_norm(path)}"

    def lookup(self, path: str) -> bytes | None:
        path = _norm(path)
        if path in self.files:
            return self.files[path]
        if self.root is not None:
            candidate = (self.root / path.lstrip("/")).resolve()
            if candidate.is_file() and candidate.is_relative_to(self.root.resolve()):
                return candidate.read_bytes()
        return None

    def gets(self, path: str | None = None) -> list[Request]:
        """The GET requests seen so far (for one path if given)."""
        return [r for r in self.requests if r.method == "GET" and (path is None or r.path == _norm(path))]

    def _take_drop(self) -> int | None:
        with self._lock:
            if self.drop_after is None or self.drops == 0:
                return None
            if self.drops is not None:
                self.drops -= 1
            return self.drop_after

    def _record(self, request: Request) -> None:
        with self._lock:
            self.requests.append(request)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: FileServer

    def handle_error(self, request: object, client_address: object) -> None:
        """Clients that hang up early (timeouts, cut transfers) are expected; keep them off stderr."""
        error = sys.exc_info()[1]
        if error is not None:
            self.owner.errors.append(error)


def _norm(path: str) -> str:
    path = unquote(urlsplit(path).path) or "/"
    return path if path.startswith("/") else "/" + path


class _Handler(BaseHTTPRequestHandler):
    owner: FileServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_GET(self) -> None:
        self._serve(body=True)

    def _serve(self, body: bool) -> None:
        srv = self.owner
        if srv.stall:
            time.sleep(srv.stall)
        path = _norm(self.path)
        range_header = self.headers.get("Range")
        if path in srv.redirects:
            self._plain(302, body, path, range_header, extra={"Location": srv.redirects[path]})
            return
        forced = srv.status.get(path)
        data = srv.lookup(path) if forced is None else None
        if forced is not None or data is None:
            code = forced or 404
            self._plain(code, body, path, range_header)
            return
        if path in srv.corrupt and data:
            mid = len(data) // 2
            data = data[:mid] + bytes([data[mid] ^ 0xFF]) + data[mid + 1 :]
        etag = '"' + hashlib.md5(srv.lookup(path) or b"").hexdigest() + '"'
        size = len(data)
        span = self._span(range_header, size, etag)
        if span == "unsatisfiable":
            self._plain(416, body, path, range_header, extra={"Content-Range": f"bytes */{size}"})
            return
        start, end = span if span else (0, size - 1)
        code = 206 if span else 200
        srv._record(Request(self.command, path, range_header, code, dict(self.headers)))
        self.send_response(code)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(end - start + 1 + srv.length_delta))
        self.send_header("Accept-Ranges", "bytes" if srv.ranges else "none")
        if srv.etag:
            self.send_header("ETag", etag)
        if span:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        if body:
            self._write_body(data[start : end + 1])
        if srv.length_delta:
            self.close_connection = True

    def _span(self, header: str | None, size: int, etag: str) -> tuple[int, int] | str | None:
        srv = self.owner
        if not header or not srv.ranges:
            return None
        if_range = self.headers.get("If-Range")
        if if_range and srv.etag and if_range != etag:
            return None
        match = _RANGE.match(header.strip())
        if not match or match.groups() == ("", ""):
            return None
        first, last = match.groups()
        if first == "":
            if not srv.suffix_ranges:
                return None
            n = int(last)
            return (max(0, size - n), size - 1) if n > 0 and size > 0 else "unsatisfiable"
        start = int(first)
        end = min(int(last), size - 1) if last else size - 1
        if start >= size or end < start:
            return "unsatisfiable"
        return start, end

    def _write_body(self, payload: bytes) -> None:
        srv = self.owner
        limit = srv._take_drop()
        sent = 0
        try:
            while sent < len(payload):
                step = srv.chunk if limit is None else min(srv.chunk, limit - sent)
                if step <= 0:
                    break
                self.wfile.write(payload[sent : sent + step])
                sent += step
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
            return
        if limit is not None and sent < len(payload):
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)

    def _plain(self, code: int, body: bool, path: str, range_header: str | None, extra: dict | None = None) -> None:
        text = f"{code} {self.responses.get(code, ('',))[0]}\n".encode()
        self.owner._record(Request(self.command, path, range_header, code, dict(self.headers)))
        self.send_response(code)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(text)))
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if body:
            self.wfile.write(text)
