"""UCF101 subsets read straight out of the remote zip with HTTP range requests.

The tutorial zip is 6.5 GB while a ten-class subset is a few hundred MB of it, so only the zip's
central directory and the chosen members are fetched: one Range request per member, each worker
thread on its own connection. Clips of one group (gGG) share actor and scene, so by default whole
groups go to one split and no test clip has a near-twin in train.

Resuming works per member: a clip whose size and CRC-32 match the zip's directory is kept. Every clip
is written under a temporary name and renamed only once its CRC-32 matches. ROOT/manifest.json exists
only while ROOT holds exactly what it lists: it is removed before anything under ROOT changes and
written again once every clip is verified.
"""

from __future__ import annotations

import difflib
import os
import random
import re
import struct
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

import requests

from vidcli import __version__, console, fsio
from vidcli.download import error_reason
from vidcli.errors import VidcliError, fail

DEFAULT_URL = "https://storage.googleapis.com/thumos14_files/UCF101_videos.zip"
URL_ENV = "VIDCLI_UCF101_URL"
SPLITS = ("train", "val", "test")
SPLIT_MODES = ("group", "clip")
TUTORIAL_SPLIT = {"train": 30, "val": 10, "test": 10}
MANIFEST = "manifest.json"

RETRIES = 3
RETRY_DELAY = 1.0
TIMEOUT = (10.0, 60.0)
CHUNK = 1 << 16

_CLIP = re.compile(r"v_([A-Za-z0-9]+)_g(\d+)_c(\d+)\.avi")
_EOCD, _ZIP64_LOCATOR, _ZIP64_EOCD = b"PK\x05\x06", b"PK\x06\x07", b"PK\x06\x06"
_CENTRAL, _LOCAL = b"PK\x01\x02", b"PK\x03\x04"
_EOCD_FMT, _LOCATOR_FMT, _ZIP64_FMT = "<4s4H2LH", "<4sLQL", "<4sQ2H2L4Q"
_CENTRAL_FMT, _LOCAL_FMT = "<4s6H3L5H2L", "<4s5H3L2H"
_METHODS = {0: "stored", 8: "deflated"}
_T = TypeVar("_T")


@dataclass(frozen=True)
class Member:
    """One zip entry as the central directory describes it; `end` bounds its local header + data."""

    name: str
    offset: int
    end: int
    method: int
    flags: int
    crc: int
    csize: int
    size: int


@dataclass(frozen=True)
class Clip:
    member: Member
    cls: str
    group: int
    number: int
    split: str = ""

    @property
    def filename(self) -> str:
        return self.member.name.rsplit("/", 1)[-1]

    @property
    def relpath(self) -> str:
        return f"{self.split}/{self.cls}/{self.filename}"


@dataclass(frozen=True)
class ZipDirectory:
    url: str
    size: int
    etag: str | None
    members: list[Member]


class _Transient(Exception):
    """A failure worth retrying: dropped connection, timeout, 5xx."""


class _Stopped(Exception):
    """Another worker failed or the user pressed Ctrl-C; give up this member."""


# ---------------------------------------------------------------- options


def resolve_url(url: str | None) -> str:
    """--url, else $VIDCLI_UCF101_URL, else the zip the TensorFlow tutorials use."""
    chosen = url or os.environ.get(URL_ENV) or DEFAULT_URL
    if urlsplit(chosen).scheme not in ("http", "https"):
        raise VidcliError(f"UCF101 URL {chosen!r} must start with http:// or https://")
    return chosen


def parse_split(text: str) -> dict[str, int]:
    """'train=30,val=10,test=10' -> {'train': 30, 'val': 10, 'test': 10}; splits left out get none."""
    counts: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or key not in SPLITS or not value.strip().isdigit():
            raise VidcliError(f"--split {text!r}: expected NAME=COUNT pairs with NAME in {', '.join(SPLITS)}")
        if key in counts:
            raise VidcliError(f"--split {text!r}: '{key}' given twice")
        counts[key] = int(value)
    if not any(counts.values()):
        raise VidcliError(f"--split {text!r}: ask for at least one clip")
    return counts


# ---------------------------------------------------------------- HTTP


class _Remote:
    """Range reads of one URL; every thread gets its own `requests.Session` (its own connection)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._local = threading.local()
        self._sessions: list[requests.Session] = []
        self._lock = threading.Lock()

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
        for session in self._sessions:
            session.close()

    def head(self) -> tuple[int, str | None]:
        response = self._request("HEAD", {})
        response.close()
        length = response.headers.get("Content-Length", "")
        if response.headers.get("Accept-Ranges", "").lower() == "none":
            raise fail(f"{self.url}: the server does not support HTTP Range requests, which vidcli needs")
        if not length.isdigit():
            raise fail(f"{self.url}: the server does not say how big the zip is (no Content-Length)")
        return int(length), response.headers.get("ETag")

    def open_range(self, start: int, end: int) -> requests.Response:
        """A streaming 206 response for bytes start..end (inclusive)."""
        response = self._request("GET", {"Range": f"bytes={start}-{end}"})
        if response.status_code != 206:
            response.close()
            raise fail(f"{self.url}: the server ignored an HTTP Range request (answered {response.status_code})")
        got = re.match(r"bytes (\d+)-(\d+)/", response.headers.get("Content-Range", ""))
        if not got or int(got.group(1)) != start:
            response.close()
            raise fail(f"{self.url}: the server answered a Range request with the wrong bytes")
        return response

    def read(self, start: int, end: int) -> bytes:
        def attempt() -> bytes:
            with self.open_range(start, end) as response:
                return _Body(response).read(end - start + 1)

        return _retry(attempt, f"reading {self.url}")

    def _request(self, method: str, headers: dict[str, str]) -> requests.Response:
        try:
            response = self.session().request(method, self.url, headers=headers, stream=True, timeout=TIMEOUT)
        except requests.RequestException as exc:
            raise _Transient(error_reason(exc)) from exc
        code = response.status_code
        if code < 400:
            return response
        response.close()
        text = f"HTTP {code} {response.reason or ''}".rstrip()
        if code == 429 or code >= 500:
            raise _Transient(text)
        hint = " (check --url)" if code in (403, 404, 410) else ""
        raise VidcliError(f"{self.url}: {text}{hint}", exit_code=2 if hint else 1)


class _Body:
    """Exact-size reads from a streamed response; network trouble becomes `_Transient`."""

    def __init__(self, response: requests.Response) -> None:
        self._chunks = response.iter_content(CHUNK)
        self._buffer = b""

    def _more(self) -> bytes:
        try:
            chunk = next(self._chunks)
        except StopIteration:
            raise _Transient("connection closed early") from None
        except requests.RequestException as exc:
            raise _Transient(error_reason(exc)) from exc
        return chunk

    def read(self, n: int) -> bytes:
        parts, have = [self._buffer], len(self._buffer)
        while have < n:
            chunk = self._more()
            parts.append(chunk)
            have += len(chunk)
        data = b"".join(parts)
        self._buffer = data[n:]
        return data[:n]

    def stream(self, n: int) -> Iterator[bytes]:
        while n > 0:
            if not self._buffer:
                self._buffer = self._more()
            piece, self._buffer = self._buffer[:n], self._buffer[n:]
            n -= len(piece)
            yield piece

    def drain(self, limit: int = CHUNK) -> None:
        """Read the few bytes left (a data descriptor) so the connection can serve the next member."""
        try:
            for chunk in self._chunks:
                limit -= len(chunk)
                if limit < 0:
                    return
        except requests.RequestException:
            pass


def _retry(action: Callable[[], _T], what: str) -> _T:
    for attempt in range(RETRIES + 1):
        try:
            return action()
        except _Transient as exc:
            if attempt == RETRIES:
                raise fail(f"{what} failed after {RETRIES + 1} tries: {exc}") from exc
            time.sleep(RETRY_DELAY * (attempt + 1))
    raise AssertionError("unreachable")


# ---------------------------------------------------------------- zip directory


def read_directory(url: str, remote: _Remote | None = None) -> ZipDirectory:
    """The zip's central directory, read with two or three small Range requests (zip64 aware)."""
    own = remote is None
    remote = remote or _Remote(url)
    try:
        size, etag = _retry(remote.head, f"asking {url} for its size")
        tail_start = max(0, size - (22 + 0xFFFF + 20))
        tail = remote.read(tail_start, size - 1) if size else b""
        pos = _find_eocd(tail)
        if pos < 0:
            raise VidcliError(f"{url}: not a zip file (no end-of-central-directory record)")
        _, disk, cd_disk, _, count, cd_size, cd_offset, _ = struct.unpack_from(_EOCD_FMT, tail, pos)
        locator = pos - 20
        if locator >= 0 and tail[locator : locator + 4] == _ZIP64_LOCATOR:
            _, _, z64_offset, _ = struct.unpack_from(_LOCATOR_FMT, tail, locator)
            record = _slice_or_read(remote, tail, tail_start, z64_offset, 56)
            if record[:4] != _ZIP64_EOCD:
                raise VidcliError(f"{url}: damaged zip64 end record")
            _, _, _, _, disk, cd_disk, _, count, cd_size, cd_offset = struct.unpack(_ZIP64_FMT, record)
        if disk or cd_disk:
            raise VidcliError(f"{url}: multi-part zips are not supported")
        if cd_offset + cd_size > size:
            raise VidcliError(f"{url}: damaged zip (central directory lies past the end)")
        central = _slice_or_read(remote, tail, tail_start, cd_offset, cd_size) if cd_size else b""
        try:
            members = _parse_central(url, central, count, cd_offset)
        except struct.error as exc:
            raise VidcliError(f"{url}: damaged zip (central directory: {exc})") from exc
        return ZipDirectory(url, size, etag, members)
    finally:
        if own:
            remote.close()


def _find_eocd(tail: bytes) -> int:
    pos = tail.rfind(_EOCD)
    while pos >= 0:
        if len(tail) - pos >= 22 and pos + 22 + struct.unpack_from("<H", tail, pos + 20)[0] == len(tail):
            return pos
        pos = tail.rfind(_EOCD, 0, pos)
    return -1


def _slice_or_read(remote: _Remote, tail: bytes, tail_start: int, offset: int, length: int) -> bytes:
    if offset >= tail_start and offset + length <= tail_start + len(tail):
        return tail[offset - tail_start : offset - tail_start + length]
    return remote.read(offset, offset + length - 1)


def _parse_central(url: str, data: bytes, count: int, cd_offset: int) -> list[Member]:
    raw: list[tuple] = []
    pos = 0
    for _ in range(count):
        if data[pos : pos + 4] != _CENTRAL or pos + 46 > len(data):
            raise VidcliError(f"{url}: damaged zip (bad central directory entry #{len(raw) + 1})")
        fields = struct.unpack_from(_CENTRAL_FMT, data, pos)
        flags, method, crc, csize, size = fields[3], fields[4], fields[7], fields[8], fields[9]
        name_len, extra_len, comment_len, offset = fields[10], fields[11], fields[12], fields[16]
        name_bytes = data[pos + 46 : pos + 46 + name_len]
        name = name_bytes.decode("utf-8" if flags & 0x800 else "cp437", errors="replace")
        extra = data[pos + 46 + name_len : pos + 46 + name_len + extra_len]
        size, csize, offset = _zip64_extra(extra, size, csize, offset)
        raw.append((name, offset, method, flags, crc, csize, size))
        pos += 46 + name_len + extra_len + comment_len
    starts = sorted({r[1] for r in raw} | {cd_offset})
    ends = {a: b for a, b in zip(starts, starts[1:], strict=False)}
    members = []
    for name, offset, method, flags, crc, csize, size in raw:
        if offset >= cd_offset:
            raise VidcliError(f"{url}: damaged zip (member {name!r} starts inside the central directory)")
        members.append(Member(name, offset, ends[offset], method, flags, crc, csize, size))
    return members


def _zip64_extra(extra: bytes, size: int, csize: int, offset: int) -> tuple[int, int, int]:
    pos = 0
    while pos + 4 <= len(extra):
        tag, length = struct.unpack_from("<2H", extra, pos)
        if tag == 1:
            values = list(struct.unpack_from(f"<{length // 8}Q", extra, pos + 4))
            if size == 0xFFFFFFFF and values:
                size = values.pop(0)
            if csize == 0xFFFFFFFF and values:
                csize = values.pop(0)
            if offset == 0xFFFFFFFF and values:
                offset = values.pop(0)
        pos += 4 + length
    return size, csize, offset


def _unsafe(name: str) -> bool:
    parts = name.replace("\\", "/").split("/")
    return name.startswith(("/", "\\")) or bool(re.match(r"^[A-Za-z]:", name)) or ".." in parts


def catalog(directory: ZipDirectory) -> dict[str, dict[int, list[Clip]]]:
    """class -> group -> clips (by clip number). Refuses unsafe names and zips that are not UCF101."""
    by_class: dict[str, dict[int, list[Clip]]] = {}
    seen: set[str] = set()
    for member in directory.members:
        if _unsafe(member.name):
            raise VidcliError(f"{directory.url}: zip member {member.name!r} has an unsafe path; refusing this zip")
        match = _CLIP.fullmatch(member.name.rsplit("/", 1)[-1])
        if not match or member.name.endswith("/"):
            continue
        if match.group(0) in seen:
            raise VidcliError(f"{directory.url}: two zip members are named {match.group(0)}")
        seen.add(match.group(0))
        clip = Clip(member, match.group(1), int(match.group(2)), int(match.group(3)))
        by_class.setdefault(clip.cls, {}).setdefault(clip.group, []).append(clip)
    if not by_class:
        raise VidcliError(
            f"{directory.url}: not the UCF101 zip: no member is named like UCF101/v_<Class>_g<GG>_c<CC>.avi"
        )
    for groups in by_class.values():
        for clips in groups.values():
            clips.sort(key=lambda c: c.number)
    return dict(sorted(by_class.items()))


# ---------------------------------------------------------------- choosing clips


def select_classes(available: list[str], classes: int | None, class_names: list[str] | None) -> list[str]:
    """The first `classes` in sorted order, or `class_names` (matched case-insensitively, near misses named)."""
    if class_names:
        lower = {c.lower(): c for c in available}
        chosen: list[str] = []
        for name in class_names:
            found = lower.get(name.strip().lower())
            if found is None:
                near = difflib.get_close_matches(name, available, n=3, cutoff=0.6)
                hint = f"did you mean {', '.join(near)}?" if near else f"the zip has {len(available)} classes"
                raise VidcliError(f"unknown UCF101 class '{name}' ({hint})")
            if found not in chosen:
                chosen.append(found)
        return chosen
    n = len(available) if classes is None else classes
    if n < 1:
        raise VidcliError(f"--classes {classes}: ask for at least one class")
    if n > len(available):
        raise VidcliError(f"--classes {n}: the zip has only {len(available)} classes")
    return available[:n]


def plan_splits(
    groups: dict[int, list[Clip]], cls: str, split: dict[str, int], split_by: str, seed: int
) -> list[Clip]:
    """Clips of one class with their split; a seeded RNG per class keeps a class's split independent of the others."""
    rng = random.Random(f"ucf101:{seed}:{cls}")
    wanted = [(name, split.get(name, 0)) for name in SPLITS if split.get(name, 0) > 0]
    total = sum(n for _, n in wanted)
    have = sum(len(c) for c in groups.values())
    asked = ",".join(f"{k}={n}" for k, n in wanted)
    if total > have:
        raise VidcliError(f"class {cls}: --split {asked} asks for {total} clips but it has only {have}")
    chosen: list[Clip] = []
    if split_by == "clip":
        pool = [c for g in sorted(groups) for c in groups[g]]
        rng.shuffle(pool)
        for name, n in wanted:
            chosen += [replace(c, split=name) for c in pool[:n]]
            pool = pool[n:]
        return chosen
    order = sorted(groups)
    rng.shuffle(order)
    queue = deque(order)
    for name, n in wanted:
        while n > 0:
            if not queue:
                raise VidcliError(
                    f"class {cls}: its {len(groups)} groups ({have} clips) run out before --split {asked} "
                    f"is met without splitting a group; ask for fewer clips or use --split-by clip"
                )
            take = groups[queue.popleft()][:n]
            chosen += [replace(c, split=name) for c in take]
            n -= len(take)
    return chosen


# ---------------------------------------------------------------- fetching


def fetch_ucf101(
    out: Path,
    *,
    url: str,
    classes: int | None,
    class_names: list[str] | None,
    split: dict[str, int],
    split_by: str,
    seed: int,
    workers: int,
    force: bool = False,
) -> dict:
    """Fetch the chosen UCF101 clips into OUT/{split}/{class}/, verify them, write the manifest; return a summary.

    `classes=None` and no `class_names` means every class. Files under OUT outside the chosen classes
    are an error unless `force` removes them, so two selections never mix unnoticed; clips of the
    chosen classes that a new split no longer needs are moved where needed or removed.
    """
    started = time.monotonic()
    out, url = Path(out), resolve_url(url)
    if split_by not in SPLIT_MODES:
        raise VidcliError(f"--split-by {split_by!r}: choose one of {', '.join(SPLIT_MODES)}")
    if workers < 1:
        raise VidcliError(f"--workers {workers}: need at least one")
    unknown = set(split) - set(SPLITS)
    if unknown or not any(split.values()) or min(split.values(), default=0) < 0:
        raise VidcliError(f"split {split}: give non-negative counts for {', '.join(SPLITS)}")
    if out.exists() and not out.is_dir():
        raise VidcliError(f"--out {out}: exists and is not a folder")
    remote = _Remote(url)
    try:
        directory = read_directory(url, remote)
        by_class = catalog(directory)
        chosen = select_classes(list(by_class), classes, class_names)
        plan = [c for cls in chosen for c in plan_splits(by_class[cls], cls, split, split_by, seed)]
        _check_readable(url, plan)
        misplaced, unwanted = _prepare(out, plan, force)
        listed = sum(len(g) for c in by_class.values() for g in c.values())
        console.log(f"UCF101 zip lists {listed} clips in {len(by_class)} classes; this selection takes {len(plan)}")
        stats = _settle_all(remote, out, plan, misplaced, workers)
        stats["removed"] = sum(_unlink(p) for paths in [*misplaced.values(), unwanted] for p in paths)
        _remove_empty_folders(out)
    finally:
        remote.close()
    manifest = _manifest(directory, chosen, split, split_by, seed, plan)
    fsio.write_json(out / MANIFEST, manifest)
    counts = {s: sum(1 for c in plan if c.split == s) for s in SPLITS if split.get(s)}
    return {
        "root": str(out),
        "manifest": str(out / MANIFEST),
        "url": url,
        "classes": chosen,
        "split": {s: split[s] for s in SPLITS if s in split},
        "split_by": split_by,
        "seed": seed,
        "clips": counts,
        **stats,
        "seconds": round(time.monotonic() - started, 3),
    }


def _check_readable(url: str, plan: list[Clip]) -> None:
    for clip in plan:
        member = clip.member
        if member.flags & 0x1:
            raise VidcliError(f"{url}: member {member.name} is encrypted")
        if member.method not in _METHODS:
            raise VidcliError(f"{url}: member {member.name} uses zip compression method {member.method}, not supported")


def _prepare(out: Path, plan: list[Clip], force: bool) -> tuple[dict[str, list[Path]], list[Path]]:
    """Clear leftovers of killed runs; sort the clips already under OUT that are not where the plan wants them.

    Returns the misplaced ones the plan uses (candidates to move, e.g. after a new --seed) and the
    surplus: clips of the chosen classes the plan no longer needs. Anything else (other classes, files
    that are no UCF101 clip) is foreign and needs `force`. The manifest goes first, as OUT is about to change.
    """
    planned = {c.filename: out / c.relpath for c in plan}
    chosen = {c.cls for c in plan}
    misplaced: dict[str, list[Path]] = {}
    surplus: list[Path] = []
    foreign: list[Path] = []
    for path in _clip_files(out):
        match = _CLIP.fullmatch(path.name)
        if path.name.startswith(".") and fsio.PARTIAL_MARK in path.name:
            _unlink(path)
        elif path.name in planned:
            if path != planned[path.name]:
                misplaced.setdefault(path.name, []).append(path)
        elif match and match.group(1) == path.parent.name and path.parent.name in chosen:
            surplus.append(path)
        elif not path.name.startswith("."):
            foreign.append(path)
    if foreign and not force:
        raise VidcliError(
            f"{out} holds {len(foreign)} file(s) outside the chosen classes (e.g. {foreign[0]}); "
            "pass --force to remove them or choose another --out"
        )
    _unlink(out / MANIFEST)
    return misplaced, surplus + foreign


def _clip_files(out: Path) -> list[Path]:
    files = []
    for split in SPLITS:
        if (out / split).is_dir():
            files += [p for d in (out / split).iterdir() if d.is_dir() for p in d.iterdir() if p.is_file()]
    return sorted(files)


def _settle_all(remote: _Remote, out: Path, plan: list[Clip], misplaced: dict[str, list[Path]], workers: int) -> dict:
    stop = threading.Event()
    tally = {"fetched": 0, "kept": 0, "moved": 0, "bytes_fetched": 0}
    with console.progress(len(plan), "UCF101 clips") as advance:
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ucf101")
        futures = [pool.submit(_settle, remote, c, out / c.relpath, misplaced.get(c.filename, []), stop) for c in plan]
        try:
            for future in as_completed(futures):
                outcome, nbytes = future.result()
                tally[outcome] += 1
                tally["bytes_fetched"] += nbytes
                advance(1)
        except BaseException:
            stop.set()
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        pool.shutdown()
    return tally


def _remove_empty_folders(out: Path) -> None:
    for split in SPLITS:
        folders = [d for d in (out / split).iterdir() if d.is_dir()] if (out / split).is_dir() else []
        for folder in folders:
            if not any(folder.iterdir()):
                folder.rmdir()


def _settle(remote: _Remote, clip: Clip, dest: Path, candidates: list[Path], stop: threading.Event) -> tuple[str, int]:
    """Make `dest` hold the member: keep it if it verifies, else move a verified copy, else fetch it."""
    if stop.is_set():
        raise _Stopped()
    member = clip.member
    if _matches(dest, member):
        return "kept", 0
    for path in candidates:
        if _matches(path, member):
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, dest)
            return "moved", 0
    return "fetched", _retry(lambda: _download_member(remote, member, dest, stop), f"fetching {member.name}")


def _matches(path: Path, member: Member) -> bool:
    try:
        if not path.is_file() or path.stat().st_size != member.size:
            return False
        crc = 0
        with open(path, "rb") as f:
            while block := f.read(1 << 20):
                crc = zlib.crc32(block, crc)
    except OSError:
        return False
    return crc == member.crc


def _download_member(remote: _Remote, member: Member, dest: Path, stop: threading.Event) -> int:
    """One Range request covers the local header and the data; the file gets its name only if its CRC-32 matches."""
    if stop.is_set():
        raise _Stopped()
    end = min(member.end, member.offset + 30 + 2 * 0xFFFF + member.csize) - 1
    with fsio.atomic_path(dest) as tmp, remote.open_range(member.offset, end) as response:
        body = _Body(response)
        header = struct.unpack(_LOCAL_FMT, body.read(30))
        if header[0] != _LOCAL:
            raise fail(f"{remote.url}: no zip entry where {member.name} should start; has the zip changed?")
        if member.offset + 30 + header[9] + header[10] + member.csize > end + 1:
            raise fail(f"{remote.url}: damaged zip ({member.name} runs into the next entry)")
        body.read(header[9] + header[10])
        inflate = zlib.decompressobj(-15) if member.method == 8 else None
        crc = size = 0
        try:
            with open(tmp, "wb") as f:
                for piece in body.stream(member.csize):
                    if stop.is_set():
                        raise _Stopped()
                    data = inflate.decompress(piece, member.size - size + 1) if inflate else piece
                    crc, size = zlib.crc32(data, crc), size + len(data)
                    if size > member.size:
                        break
                    f.write(data)
                if inflate and size <= member.size:
                    data = inflate.flush()
                    crc, size = zlib.crc32(data, crc), size + len(data)
                    f.write(data)
            body.drain()
        except zlib.error as exc:
            raise fail(f"{member.name}: corrupt deflate data from {remote.url} ({exc}); file not kept") from exc
        if (inflate and not inflate.eof) or size != member.size or crc != member.crc:
            raise fail(
                f"{member.name}: CRC-32 {crc:08x} / {size} bytes, but the zip's directory says "
                f"{member.crc:08x} / {member.size} bytes; file not kept (has the zip changed on the server?)"
            )
    return member.csize


def _unlink(path: Path) -> int:
    try:
        path.unlink()
        return 1
    except FileNotFoundError:
        return 0
    except OSError as exc:
        raise fail(f"cannot remove {path}: {exc.strerror or exc}") from exc


def _manifest(
    directory: ZipDirectory, chosen: list[str], split: dict[str, int], split_by: str, seed: int, plan: list[Clip]
) -> dict:
    return {
        "dataset": "UCF101 (subset)",
        "created_by": f"vidcli {__version__} data fetch-ucf101",
        "source": {"url": directory.url, "zip_size": directory.size, "etag": directory.etag},
        "classes": chosen,
        "split_by": split_by,
        "split": {s: split[s] for s in SPLITS if s in split},
        "seed": seed,
        "members": [
            {
                "name": c.member.name,
                "path": c.relpath,
                "split": c.split,
                "class": c.cls,
                "group": c.group,
                "size": c.member.size,
                "crc32": f"{c.member.crc:08x}",
            }
            for c in sorted(plan, key=lambda c: (SPLITS.index(c.split), c.cls, c.filename))
        ],
    }
