"""UCF101 subsets read straight out of the remote zip with HTTP range requests.

The tutorial zip is 6.5 GB while a ten-class subset is a few hundred MB of it, so only the zip's
central directory and the chosen members are fetched (remotezip: one Range request per member), each
worker thread with its own connection. Clips of one group (gGG) share actor and scene, so by default
whole groups go to one split and no test clip has a near-twin in train.

Resuming works per member: a clip whose size and CRC-32 match the zip's directory is kept. Every clip
is written under a temporary name and renamed only once zipfile has checked its CRC-32. ROOT/manifest.json
exists only while ROOT holds exactly what it lists: it is removed before anything under ROOT changes and
written again once every clip is verified.
"""

from __future__ import annotations

import difflib
import io
import os
import random
import re
import struct
import threading
import time
import zipfile
import zlib
from collections import deque
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urlsplit

import remotezip

from vidcli import __version__, console, fsio, httprange
from vidcli.errors import VidcliError, fail

DEFAULT_URL = "https://storage.googleapis.com/thumos14_files/UCF101_videos.zip"
URL_ENV = "VIDCLI_UCF101_URL"
SPLITS = ("train", "val", "test")
SPLIT_MODES = ("group", "clip")
TUTORIAL_SPLIT = {"train": 30, "val": 10, "test": 10}
MANIFEST = "manifest.json"
CHUNK = 1 << 16

_CLIP = re.compile(r"v_([A-Za-z0-9]+)_g(\d+)_c(\d+)\.avi")
_METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA)


@dataclass(frozen=True)
class Clip:
    member: zipfile.ZipInfo
    cls: str
    group: int
    number: int
    split: str = ""

    @property
    def filename(self) -> str:
        return self.member.filename.rsplit("/", 1)[-1]

    @property
    def relpath(self) -> str:
        return f"{self.split}/{self.cls}/{self.filename}"


@dataclass(frozen=True)
class ZipDirectory:
    url: str
    size: int
    etag: str | None
    members: list[zipfile.ZipInfo]


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


# ---------------------------------------------------------------- the remote zip


class _Zip:
    """The remote zip: its size and ETag, the blocks remotezip read for the directory (kept, so each
    worker thread builds its own RemoteZip from memory), and that RemoteZip per thread."""

    def __init__(self, url: str) -> None:
        self.remote = httprange.Remote(url, hint=" (check --url)")
        self.url, self.size, self.etag = url, 0, None
        self._blocks: dict[tuple[int, int], bytes] = {}
        self._local = threading.local()
        self._zips: list[remotezip.RemoteZip] = []
        self._lock = threading.Lock()

    def head(self) -> None:
        response = self.remote.retry(lambda: self.remote.request("HEAD"), f"asking {self.url} for its size")
        response.close()
        length = response.headers.get("Content-Length", "")
        if response.headers.get("Accept-Ranges", "").lower() == "none":
            raise fail(f"{self.url}: the server does not support HTTP Range requests, which vidcli needs")
        if not length.isdigit():
            raise fail(f"{self.url}: the server does not say how big the zip is (no Content-Length)")
        self.size, self.etag = int(length), response.headers.get("ETag")

    def block(self, start: int, end: int) -> bytes:
        if (start, end) not in self._blocks:
            what = f"reading the zip directory of {self.url}"
            self._blocks[start, end] = self.remote.retry(lambda: self.remote.read(start, end, self.size), what)
        return self._blocks[start, end]

    def this_thread(self) -> remotezip.RemoteZip:
        """This thread's RemoteZip (one stream at a time, so one per thread)."""
        zf = getattr(self._local, "zip", None)
        if zf is None:
            zf = remotezip.RemoteZip(self.url, fetcher=lambda *_, **__: _Fetcher(self))
            self._local.zip = zf
            with self._lock:
                self._zips.append(zf)
        return zf

    def forget_this_thread(self) -> None:
        """After a failed read: the next attempt starts on a fresh RemoteZip, never on a half-read stream."""
        zf, self._local.zip = getattr(self._local, "zip", None), None
        if zf is not None:
            _close_zip(zf)

    def close(self) -> None:
        with self._lock:
            for zf in self._zips:
                _close_zip(zf)
        self.remote.close()


class _Fetcher(remotezip.RemoteFetcher):
    """remotezip's range reads through `httprange` (retries, checked answers, a session per thread)."""

    def __init__(self, zip_: _Zip) -> None:
        super().__init__(zip_.url)
        self.zip = zip_

    def fetch(self, data_range: tuple[int, int | None], stream: bool = False) -> remotezip.PartialBuffer:
        start, end = data_range
        if end is None:  # the tail, asked as a suffix range, which not every server supports
            start, end = max(0, self.zip.size + start), self.zip.size - 1
        if not 0 <= start <= end < self.zip.size:
            raise zipfile.BadZipFile(f"bytes {start}-{end} lie outside the zip's {self.zip.size} bytes")
        if stream:
            body = httprange.Body(self.zip.remote.open_range(start, end, self.zip.size))
            return remotezip.PartialBuffer(body, start, end - start + 1, True)
        data = self.zip.block(start, end)
        return remotezip.PartialBuffer(io.BytesIO(data), start, len(data), False)


def _close_zip(zf: remotezip.RemoteZip) -> None:
    fp = zf.fp
    zf.close()
    if fp is not None:
        fp.close()


def read_directory(url: str, zip_: _Zip | None = None) -> ZipDirectory:
    """The zip's central directory: a HEAD, then remotezip reads the tail (and the directory if it lies before)."""
    own = zip_ is None
    zip_ = zip_ or _Zip(url)
    try:
        zip_.head()
        if zip_.size < 22:
            raise VidcliError(f"{url}: not a zip file ({zip_.size} bytes)")
        try:
            members = zip_.this_thread().infolist()
        except (zipfile.BadZipFile, remotezip.RemoteZipError, EOFError, struct.error) as exc:
            text = str(exc)
            raise VidcliError(f"{url}: {'not a zip file' if 'not a zip' in text else f'damaged zip ({text})'}") from exc
        return ZipDirectory(url, zip_.size, zip_.etag, members)
    finally:
        if own:
            zip_.close()


def _unsafe(name: str) -> bool:
    parts = name.replace("\\", "/").split("/")
    return name.startswith(("/", "\\")) or bool(re.match(r"^[A-Za-z]:", name)) or ".." in parts


def catalog(directory: ZipDirectory) -> dict[str, dict[int, list[Clip]]]:
    """class -> group -> clips (by clip number). Refuses unsafe names and zips that are not UCF101."""
    by_class: dict[str, dict[int, list[Clip]]] = {}
    seen: set[str] = set()
    for member in directory.members:
        if _unsafe(member.filename):
            raise VidcliError(f"{directory.url}: zip member {member.filename!r} has an unsafe path; refusing this zip")
        match = _CLIP.fullmatch(member.filename.rsplit("/", 1)[-1])
        if not match or member.is_dir():
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
    zip_ = _Zip(url)
    try:
        directory = read_directory(url, zip_)
        by_class = catalog(directory)
        chosen = select_classes(list(by_class), classes, class_names)
        plan = [c for cls in chosen for c in plan_splits(by_class[cls], cls, split, split_by, seed)]
        _check_readable(url, plan)
        misplaced, unwanted = _prepare(out, plan, force)
        listed = sum(len(g) for c in by_class.values() for g in c.values())
        console.log(f"UCF101 zip lists {listed} clips in {len(by_class)} classes; this selection takes {len(plan)}")
        stats = _settle_all(zip_, out, plan, misplaced, workers)
        stats["removed"] = sum(_unlink(p) for paths in [*misplaced.values(), unwanted] for p in paths)
        _remove_empty_folders(out)
    except OSError as exc:  # listing, moving or sweeping clips under OUT (fsio reports its own writes)
        raise fail(f"cannot update {exc.filename or out}: {exc.strerror or exc}") from exc
    finally:
        zip_.close()
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
        if member.flag_bits & 0x1:
            raise VidcliError(f"{url}: member {member.filename} is encrypted")
        if member.compress_type not in _METHODS:
            raise VidcliError(f"{url}: member {member.filename} uses zip compression method {member.compress_type}, "
                              "not supported")


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


def _settle_all(zip_: _Zip, out: Path, plan: list[Clip], misplaced: dict[str, list[Path]], workers: int) -> dict:
    stop = threading.Event()
    tally = {"fetched": 0, "kept": 0, "moved": 0, "bytes_fetched": 0}
    with console.progress(len(plan), "UCF101 clips") as advance:
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ucf101")
        futures = [pool.submit(_settle, zip_, c, out / c.relpath, misplaced.get(c.filename, []), stop) for c in plan]
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


def _settle(zip_: _Zip, clip: Clip, dest: Path, candidates: list[Path], stop: threading.Event) -> tuple[str, int]:
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
    what = f"fetching {member.filename}"
    return "fetched", zip_.remote.retry(lambda: _download_member(zip_, member, dest, stop), what)


def _matches(path: Path, member: zipfile.ZipInfo) -> bool:
    try:
        if not path.is_file() or path.stat().st_size != member.file_size:
            return False
        crc = 0
        with open(path, "rb") as f:
            while block := f.read(1 << 20):
                crc = zlib.crc32(block, crc)
    except OSError:
        return False
    return crc == member.CRC


def _download_member(zip_: _Zip, member: zipfile.ZipInfo, dest: Path, stop: threading.Event) -> int:
    """One Range request covers the local header and the data; the file gets its name only once zipfile
    has checked its CRC-32 at the end of the stream."""
    if stop.is_set():
        raise _Stopped()
    try:
        with fsio.atomic_path(dest) as tmp, zip_.this_thread().open(member) as src, open(tmp, "wb") as out:
            size = 0
            while block := src.read(CHUNK):
                if stop.is_set():
                    raise _Stopped()
                out.write(block)
                size += len(block)
            if size != member.file_size:
                raise zipfile.BadZipFile(f"{size} bytes where the zip's directory says {member.file_size}")
    except BaseException as exc:
        zip_.forget_this_thread()
        if isinstance(exc, EOFError):
            raise httprange.Transient("connection closed early") from exc
        if isinstance(exc, (zipfile.BadZipFile, zlib.error)):
            why = f"{exc}; file not kept (has the zip changed on the server?)"
            raise fail(f"{member.filename} from {zip_.url}: {why}") from exc
        raise
    return member.compress_size


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
                "name": c.member.filename,
                "path": c.relpath,
                "split": c.split,
                "class": c.cls,
                "group": c.group,
                "size": c.member.file_size,
                "crc32": f"{c.member.CRC:08x}",
            }
            for c in sorted(plan, key=lambda c: (SPLITS.index(c.split), c.cls, c.filename))
        ],
    }
