"""HTTP reads that survive real links: the one policy the downloader and the UCF101 zip reader share.

Connection errors, timeouts, short bodies, 5xx, 408 and 429 are worth another try (with backoff);
any other 4xx means the URL is wrong and stops at once as bad input (exit 2). A server that ignores
Range or answers with other bytes than asked is told apart from one that drops the line: retrying
does not cure it, so it fails at once (exit 1). Each thread gets its own `requests.Session`, so
parallel readers never share a connection.
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from collections.abc import Callable
from typing import TypeVar

import requests
import urllib3

from vidcli import __version__, console
from vidcli.errors import VidcliError, fail

RETRIES = 3
BACKOFF = 1.0  # seconds before the first retry, doubled for each one after
TIMEOUT: float | tuple[float, float] = (10.0, 60.0)  # connect, read
CHUNK = 1 << 16
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")
_READ_ERRORS = (urllib3.exceptions.HTTPError, requests.RequestException, OSError, ValueError)
_T = TypeVar("_T")


class Transient(Exception):
    """A failure worth another try; `wait` is what the server asked for (Retry-After), if anything."""

    def __init__(self, reason: str, wait: float = 0.0) -> None:
        super().__init__(reason)
        self.wait = wait


class Remote:
    """One URL read with retries; `hint` ends the error line of a 4xx (e.g. " (check --url)")."""

    def __init__(self, url: str, *, timeout: float | tuple[float, float] | None = None, retries: int | None = None,
                 hint: str = "") -> None:
        self.url, self.hint = url, hint
        self.timeout = TIMEOUT if timeout is None else timeout
        self.retries = RETRIES if retries is None else retries
        self._local = threading.local()
        self._sessions: list[requests.Session] = []
        self._lock = threading.Lock()

    def __enter__(self) -> Remote:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            session.headers.update({"User-Agent": f"vidcli/{__version__}", "Accept-Encoding": "identity"})
            self._local.session = session
            with self._lock:
                self._sessions.append(session)
        return session

    def close(self) -> None:
        with self._lock:
            for session in self._sessions:
                session.close()

    def request(self, method: str = "GET", headers: dict[str, str] | None = None,
                allow: tuple[int, ...] = ()) -> requests.Response:
        """One try, body not read yet. Raises `Transient`, or `VidcliError` for a 4xx not in `allow`."""
        try:
            response = self.session().request(method, self.url, headers=headers or {}, stream=True,
                                              timeout=self.timeout, allow_redirects=True)
        except requests.TooManyRedirects as exc:
            raise fail(f"{self.url}: too many redirects") from exc
        except (requests.exceptions.InvalidURL, requests.exceptions.InvalidSchema,
                requests.exceptions.MissingSchema) as exc:
            raise VidcliError(f"{self.url}: {reason(exc, self.timeout)}") from exc
        except requests.RequestException as exc:
            raise Transient(reason(exc, self.timeout)) from exc
        code = response.status_code
        if code < 400 or code in allow:
            return response
        response.close()
        text = f"HTTP {code} {response.reason or ''}".rstrip()
        if code in (408, 429) or code >= 500:
            after = response.headers.get("Retry-After", "")
            raise Transient(text, min(float(after), 60.0) if after.isdigit() else 0.0)
        raise VidcliError(f"{self.url}: {text}{self.hint}")

    def open_range(self, start: int, end: int, size: int | None = None) -> requests.Response:
        """A 206 for exactly bytes start..end (of a file of `size` bytes, when known)."""
        response = self.request("GET", {"Range": f"bytes={start}-{end}"}, allow=(416,))
        code, span = response.status_code, content_range(response)
        if code == 206 and span is not None and span[:2] == (start, end) and (size is None or span[2] in (None, size)):
            return response
        response.close()
        if code == 416:
            problem = f"the server cannot serve bytes {start}-{end} (HTTP 416); has the file changed?"
        elif code != 206:
            problem = f"the server ignored an HTTP Range request (answered {code})"
        else:
            got = ", ".join(f"{k}: {response.headers.get(k, 'none')}" for k in ("Content-Range", "Content-Length"))
            problem = f"the server answered a Range request for bytes {start}-{end} with {got}"
        raise fail(f"{self.url}: {problem}")

    def resume(self, offset: int, etag: str | None = None) -> requests.Response:
        """GET from byte `offset` on: a 206 continues a partial body; with `etag` (If-Range) a changed file
        comes whole (200); a 416 says there is nothing past `offset`."""
        headers = {"Range": f"bytes={offset}-", **({"If-Range": etag} if etag else {})} if offset else {}
        return self.request("GET", headers, allow=(416,) if offset else ())

    def read(self, start: int, end: int, size: int | None = None) -> bytes:
        """Bytes start..end; a short body is `Transient`."""
        with self.open_range(start, end, size) as response:
            body = Body(response)
            data = body.read(end - start + 1)
            if len(data) != end - start + 1:
                raise Transient(f"connection closed early ({len(data)} of {end - start + 1} bytes)")
            return data

    def retry(self, action: Callable[[], _T], what: str, then: Callable[[], str] | None = None) -> _T:
        """`action()` until it stops raising `Transient`, at most 1 + retries times, with backoff; `then()`
        ends the final error line."""
        for attempt in range(self.retries + 1):
            try:
                return action()
            except Transient as exc:
                tries = f"{attempt + 1} {'try' if attempt == 0 else 'tries'}"
                if attempt == self.retries:
                    raise fail(f"{what} failed after {tries}: {exc}{then() if then else ''}") from exc
                console.warn(f"{what}: {exc}; trying again")
                time.sleep(max(exc.wait, BACKOFF * 2**attempt))
        raise AssertionError("unreachable")


class Body:
    """A streamed response body as a file whose read errors are `Transient`, never `OSError` (which
    `fsio` would report as a failed write). `close` reads a small rest so the connection is reused."""

    def __init__(self, response: requests.Response) -> None:
        self.response = response
        self.position = 0
        self.closed = False
        length = response.headers.get("Content-Length", "")
        self.length = int(length) if length.isdigit() else None

    def read(self, n: int = -1, *, some: bool = False) -> bytes:
        """Up to `n` bytes (all with n < 0); with `some`, what has arrived (a cut loses nothing received)."""
        try:
            raw = self.response.raw
            data = raw.read1(n if n >= 0 else CHUNK) if some else raw.read(None if n < 0 else n)
        except _READ_ERRORS as exc:
            raise Transient(reason(exc)) from exc
        self.position += len(data)
        if not data and n and self.length is not None and self.position < self.length:
            raise Transient(f"connection closed early ({self.position} of {self.length} bytes)")
        return data

    def tell(self) -> int:
        return self.position

    def close(self, rest: int = CHUNK) -> None:
        if self.closed:
            return
        self.closed = True
        if self.length is not None and 0 < self.length - self.position <= rest:
            with contextlib.suppress(*_READ_ERRORS):
                self.response.raw.read(self.length - self.position)
        self.response.close()


def content_range(response: requests.Response) -> tuple[int, int, int | None] | None:
    """(first, last, total) of a 206, or None when its headers disagree with each other."""
    match = _CONTENT_RANGE.match(response.headers.get("Content-Range", "").strip())
    if not match:
        return None
    first, last = int(match.group(1)), int(match.group(2))
    total = None if match.group(3) == "*" else int(match.group(3))
    length = response.headers.get("Content-Length", "")
    if last < first or (total is not None and last >= total) or (length.isdigit() and int(length) != last - first + 1):
        return None
    return first, last, total


def reason(exc: BaseException, timeout: float | tuple[float, float] | None = None) -> str:
    """The innermost useful words of a requests/urllib3 error chain ("Connection refused", ...)."""
    if isinstance(exc, (requests.Timeout, urllib3.exceptions.TimeoutError, TimeoutError)):
        limit = timeout
        if isinstance(timeout, tuple):
            limit = timeout[0] if isinstance(exc, requests.ConnectTimeout) else timeout[1]
        return f"no answer within {limit:g} s" if limit else "timed out"
    text = str(exc)
    if isinstance(exc, urllib3.exceptions.ProtocolError) and "IncompleteRead" in text:
        return "connection closed early"
    for pattern in (r"\[Errno -?\d+\] ([^'\")\]]+)", r"(Connection refused|Connection reset|timed out)"):
        found = re.search(pattern, text)
        if found:
            return found.group(1).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__
