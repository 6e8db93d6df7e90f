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

from vidcli import console, fsio, httprange
from vidcli.errors import VidcliError, fail

CHUNK = 1 << 16


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
    if dest.is_file() and (expected or not overwrite):
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
    with httprange.Remote(url, timeout=timeout, retries=retries) as remote:
        for fresh_start in (False, True):
            resumed = remote.retry(lambda: _stream(remote, partial, meta, label), f"downloading {url}",
                                   then=lambda: "; run again to resume" if partial.is_file() else "")
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


def _stream(remote: httprange.Remote, partial: Path, meta: Path, label: str) -> bool:
    """Bring `partial` to the full size of the URL; True when it continued earlier bytes."""
    offset, known = _resume_state(partial, meta, remote.url)
    response = remote.resume(offset, known.get("etag"))
    if response.status_code == 416:
        response.close()
        total = re.fullmatch(r"bytes \*/(\d+)", response.headers.get("Content-Range", "").strip())
        if total and int(total.group(1)) == offset == known.get("size"):
            return True
        offset, known = 0, {}
        response = remote.resume(0)
    if response.status_code == 206:
        span = httprange.content_range(response)
        if span is None or span[0] != offset or known.get("size") not in (None, span[2]):
            response.close()
            offset, known = 0, {}
            response = remote.resume(0)
    if response.status_code != 206:
        offset = 0
    length = response.headers.get("Content-Length", "")
    total = offset + int(length) if length.isdigit() else None
    fsio.write_json(meta, {"url": remote.url, "size": total, "etag": response.headers.get("ETag")})
    received = offset
    body = httprange.Body(response)
    with contextlib.closing(body), console.progress(total, label) as advance:
        advance(offset)
        out = _open_partial(partial, "ab" if offset else "wb")
        try:
            while block := _read(body, received, total):
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
        raise httprange.Transient(f"interrupted at {received} of {total} bytes")
    return offset > 0


def _read(body: httprange.Body, received: int, total: int | None) -> bytes:
    """The next bytes as they arrive, so a cut connection loses nothing already received."""
    try:
        return body.read(CHUNK, some=True)
    except httprange.Transient as exc:
        raise httprange.Transient(f"interrupted at {received} of {total or '?'} bytes ({exc})") from exc


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


def _open_partial(partial: Path, mode: str) -> BinaryIO:
    try:
        return open(partial, mode)
    except OSError as exc:
        raise fail(f"cannot write {partial}: {exc.strerror or exc}") from exc


def _discard(*paths: Path) -> None:
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
