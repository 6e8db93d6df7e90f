"""Resumable, checksum-verified downloads.

Data sets are hundreds of megabytes fetched over links that drop. Bytes therefore stream into
`<dest>.partial` (a fixed name, so a later run can find it) and a small `<dest>.partial.json` records
the URL, size and ETag they came from; the next attempt asks only for the missing tail with a Range
request and starts over when the server ignores Range or now serves something else. Only a file whose
checksum matches is renamed onto `dest`, so the final name never holds a partial or a wrong file.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlsplit
from urllib.request import url2pathname

import requests
import urllib3

from vidcli import console, fsio
from vidcli.errors import VidcliError, fail

CHUNK = 1 << 16
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")


class _Interrupted(Exception):
    """The body stopped early; what arrived is kept in the partial file."""


def download(
    url: str,
    dest: Path,
    *,
    md5: str | None = None,
    sha256: str | None = None,
    description: str | None = None,
    timeout: float = 60,
    retries: int = 3,
    overwrite: bool = False,
) -> Path:
    """Fetch `url` (http(s), file:// or a local path) to `dest` and verify it; return `dest`.

    A `dest` that already exists is kept when it matches the checksums, or when none are given and
    `overwrite` is False. `retries` is how many times a dropped connection is resumed within this
    call; an interrupted download also resumes on the next call.
    """
    dest = Path(dest)
    expected = {k: v.lower() for k, v in (("md5", md5), ("sha256", sha256)) if v}
    if dest.is_file():
        if not expected and not overwrite:
            return dest
        wrong = _mismatches(dest, expected)
        if not wrong:
            return dest
        console.warn(f"{dest}: checksum does not match ({_describe(wrong)}); fetching it again")
    label = description or f"downloading {dest.name}"
    source = _local_source(url)
    if source is not None:
        return _copy(source, dest, expected, label)
    return _fetch(url, dest, expected, label, timeout, retries)


def digest(path: Path, algorithm: str = "md5") -> str:
    """Hex digest of a file, read in chunks so big files need little memory."""
    h = hashlib.new(algorithm)
    try:
        with open(path, "rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
    except OSError as exc:
        raise fail(f"cannot read {path}: {exc.strerror or exc}") from exc
    return h.hexdigest()


def partial_paths(dest: Path) -> tuple[Path, Path]:
    """Where an unfinished download of `dest` keeps its bytes and its provenance."""
    dest = Path(dest)
    return dest.with_name(dest.name + ".partial"), dest.with_name(dest.name + ".partial.json")


def _mismatches(path: Path, expected: dict[str, str]) -> dict[str, tuple[str, str]]:
    actual = {algo: digest(path, algo) for algo in expected}
    return {algo: (want, actual[algo]) for algo, want in expected.items() if actual[algo] != want}


def _describe(wrong: dict[str, tuple[str, str]]) -> str:
    return "; ".join(f"{algo} expected {want}, got {got}" for algo, (want, got) in wrong.items())


def _local_source(url: str) -> Path | None:
    parts = urlsplit(url)
    if parts.scheme == "file":
        return Path(url2pathname(parts.path))
    if parts.scheme in ("http", "https"):
        return None
    if "://" in url:
        raise VidcliError(f"{url}: unsupported URL scheme {parts.scheme!r} (use http, https, file or a path)")
    return Path(url)


def _copy(source: Path, dest: Path, expected: dict[str, str], label: str) -> Path:
    if not source.is_file():
        raise VidcliError(f"{source}: file not found")
    if dest.exists() and source.resolve() == dest.resolve():
        wrong = _mismatches(dest, expected) if expected else {}
        if wrong:
            raise VidcliError(f"{dest}: checksum mismatch: {_describe(wrong)}")
        return dest
    with fsio.atomic_path(dest) as tmp:
        with console.progress(source.stat().st_size, label) as advance:
            try:
                with open(source, "rb") as src, open(tmp, "wb") as out:
                    while block := src.read(CHUNK * 16):
                        out.write(block)
                        advance(len(block))
            except OSError as exc:
                raise fail(f"cannot copy {source} to {dest}: {exc.strerror or exc}") from exc
        wrong = _mismatches(tmp, expected) if expected else {}
        if wrong:
            raise VidcliError(
                f"{dest.name}: checksum mismatch, file not kept: {_describe(wrong)} (copied from {source})"
            )
    return dest


def _fetch(url: str, dest: Path, expected: dict[str, str], label: str, timeout: float, retries: int) -> Path:
    partial, meta = partial_paths(dest)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise fail(f"cannot create {dest.parent}: {exc.strerror or exc}") from exc
    with requests.Session() as session:
        session.headers.update({"User-Agent": "vidcli", "Accept-Encoding": "identity"})
        for fresh_start in (False, True):
            resumed = False
            for attempt in range(retries + 1):
                try:
                    resumed |= _stream(session, url, partial, meta, label, timeout)
                    break
                except _Interrupted as exc:
                    if attempt == retries:
                        raise fail(f"download of {url} interrupted ({exc}); run again to resume") from exc
                    console.warn(f"download of {url} interrupted ({exc}); resuming")
            wrong = _mismatches(partial, expected) if expected else {}
            if not wrong:
                break
            _discard(partial, meta)
            if not resumed or fresh_start:
                raise VidcliError(f"{dest.name}: checksum mismatch, file removed: {_describe(wrong)} (from {url})")
            console.warn(f"{dest.name}: resumed download fails its checksum; downloading it again from the start")
    try:
        os.replace(partial, dest)
    except OSError as exc:
        raise fail(f"cannot write {dest}: {exc.strerror or exc}") from exc
    _discard(meta)
    return dest


def _stream(session: requests.Session, url: str, partial: Path, meta: Path, label: str, timeout: float) -> bool:
    """Bring `partial` to the full size of `url`; True when it continued earlier bytes."""
    offset, known = _resume_state(partial, meta, url)
    response = _get(session, url, offset, known, timeout)
    if response.status_code == 416 and offset:
        response.close()
        total = _content_range(response.headers.get("Content-Range", ""))[2]
        if total == offset == known.get("size"):
            return True
        offset, known = 0, {}
        response = _get(session, url, 0, known, timeout)
    if response.status_code == 206:
        start, _, total = _content_range(response.headers.get("Content-Range", ""))
        if start != offset or (known.get("size") not in (None, total)):
            response.close()
            offset, known = 0, {}
            response = _get(session, url, 0, known, timeout)
    if response.status_code >= 400:
        response.close()
        raise fail(f"cannot download {url}: HTTP {response.status_code} {response.reason or ''}".rstrip())
    if response.status_code != 206:
        offset = 0
    length = response.headers.get("Content-Length")
    total = offset + int(length) if length and length.isdigit() else None
    fsio.write_json(meta, {"url": url, "size": total, "etag": response.headers.get("ETag")})
    received = offset
    with response, console.progress(total, label) as advance:
        advance(offset)
        out = _open_partial(partial, "ab" if offset else "wb")
        try:
            while block := _read(response, received, total):
                try:
                    out.write(block)
                except OSError as exc:
                    raise fail(f"cannot write {partial}: {exc.strerror or exc}") from exc
                received += len(block)
                advance(len(block))
        finally:
            with contextlib.suppress(OSError):
                out.close()
    if total is not None and received != total:
        raise _Interrupted(f"{received} of {total} bytes")
    return offset > 0


def _read(response: requests.Response, received: int, total: int | None) -> bytes:
    """The next bytes as they arrive (read1), so a cut connection loses nothing already received."""
    try:
        return response.raw.read1(CHUNK)
    except (urllib3.exceptions.HTTPError, requests.RequestException, OSError) as exc:
        if isinstance(exc, urllib3.exceptions.ProtocolError) and "IncompleteRead" in str(exc):
            why = "connection closed early"
        else:
            why = error_reason(exc)
        raise _Interrupted(f"{received} of {total or '?'} bytes; {why}") from exc


def _resume_state(partial: Path, meta: Path, url: str) -> tuple[int, dict]:
    if not partial.is_file():
        return 0, {}
    try:
        known = fsio.read_json(meta)
    except VidcliError:
        known = None
    if not isinstance(known, dict) or known.get("url") != url:
        return 0, {}
    return partial.stat().st_size, known


def _get(session: requests.Session, url: str, offset: int, known: dict, timeout: float) -> requests.Response:
    headers = {}
    if offset:
        headers["Range"] = f"bytes={offset}-"
        if known.get("etag"):
            headers["If-Range"] = known["etag"]
    try:
        return session.get(url, headers=headers, stream=True, timeout=timeout)
    except requests.Timeout as exc:
        raise fail(f"cannot download {url}: no answer within {timeout:g} s") from exc
    except requests.RequestException as exc:
        raise fail(f"cannot download {url}: {error_reason(exc)}") from exc


def _content_range(value: str) -> tuple[int, int, int | None]:
    match = _CONTENT_RANGE.match(value.strip())
    if not match:
        if value.startswith("bytes */") and value[8:].isdigit():
            return -1, -1, int(value[8:])
        return -1, -1, None
    first, last, total = match.groups()
    return int(first), int(last), None if total == "*" else int(total)


def _open_partial(partial: Path, mode: str) -> BinaryIO:
    try:
        return open(partial, mode)
    except OSError as exc:
        raise fail(f"cannot write {partial}: {exc.strerror or exc}") from exc


def error_reason(exc: BaseException) -> str:
    """The innermost useful line of a requests/urllib3 error chain ("Connection refused", ...)."""
    text = str(exc)
    for pattern in (r"\[Errno -?\d+\] ([^'\")\]]+)", r"(Connection refused|timed out|Read timed out)"):
        found = re.search(pattern, text)
        if found:
            return found.group(1).strip()
    if isinstance(exc, requests.Timeout):
        return "timed out"
    return text.splitlines()[0][:200] if text else type(exc).__name__


def _discard(*paths: Path) -> None:
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
