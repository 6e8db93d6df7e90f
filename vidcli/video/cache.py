"""The decoded-frame cache (`data.cache: true`): each video is decoded once; later epochs read only the
frames a clip needs.

An entry holds every frame of one video sized by one rule (`Fit`), as raw uint8 behind a 4 KiB JSON header:
`<root>/frames/v1/<hash of path and rule>/<hash of the file's identity>.frames`. The identity is the
file's size, mtime, ctime and inode, so a video replaced or truncated after it was cached gets a new name
and is decoded again (the stale entry is deleted), and a different size or resize rule never reads another's
frames. Entries are written under a temporary name and renamed into place; an exclusive lock per entry lets
one thread or process write it while the others read that video uncached meanwhile. A cache that cannot be
written (read-only, full disk, over its size limit) says so once and training goes on uncached.

Raw frames rather than JPEG: a clip is ten reads of memory-mapped pages (about 0.1 ms per frame) instead of
ten JPEG decodes (about 1 ms per 224x224 frame), at 150 KB per 224x224 frame: 13.5 GB per hour of 25 fps video.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vidcli import fsio
from vidcli.console import warn
from vidcli.errors import VidcliError
from vidcli.video.fit import Fit

HEADER = 4096
VERSION = 1
RESERVE = 1 << 30  # leave this much of the disk free
RESCAN_EVERY = 256  # entries written between re-counts of the cache's size (other processes write too)


def default_root() -> Path:
    env = os.environ.get("VIDCLI_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "vidcli"


def identity(st: os.stat_result) -> list[int]:
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def _hash(*parts: object) -> str:
    return hashlib.sha1("\0".join(map(str, parts)).encode()).hexdigest()[:24]


@dataclass(frozen=True)
class Entry:
    """One cached video: `end` frames of `shape`, positions in `holes` never decoded; `count` is the
    length the video's index gave, which sampling starts from (as an uncached read does)."""

    path: Path
    count: int
    end: int
    holes: frozenset[int]
    shape: tuple[int, int, int]

    def fetch(self, want: list[int]) -> tuple[dict[int, np.ndarray], int | None]:
        """Same contract as an uncached read: the frames found, and where they ended if a position lies
        past the end."""
        nbytes = int(np.prod(self.shape))
        got: dict[int, np.ndarray] = {}
        with open(self.path, "rb", buffering=0) as fh:
            fd = fh.fileno()
            for p in sorted(set(want)):
                if 0 <= p < self.end and p not in self.holes:
                    data = os.pread(fd, nbytes, HEADER + p * nbytes)
                    if len(data) != nbytes:
                        raise OSError(errno.EIO, f"cache entry {self.path} is shorter than its header says")
                    got[p] = np.frombuffer(data, np.uint8).reshape(self.shape)
        return got, (self.end if want and max(want) >= self.end else None)


class FrameCache:
    def __init__(self, root: str | Path | None = None, limit_gb: float = 20.0):
        self.root = Path(root).expanduser() if root else default_root()
        self.base = self.root / "frames" / f"v{VERSION}"
        self.limit = int(limit_gb * (1 << 30))
        self.writable = True
        self.full = False
        self._lock = threading.Lock()
        self._said: set[str] = set()
        self._used: int | None = None
        self._written = 0
        self.stats = {"hits": 0, "fills": 0, "misses": 0}

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        del state["_lock"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def check(self) -> FrameCache:
        """Find out now, once, whether entries can be written (so worker processes inherit the answer)."""
        try:
            self.base.mkdir(parents=True, exist_ok=True)
            with fsio.atomic_path(self.base / ".write-test") as tmp:
                tmp.write_bytes(b"ok")
        except (OSError, VidcliError) as exc:
            self._refuse(exc)
            return self
        self._room(0)
        return self

    # -- reading -----------------------------------------------------------------------------------

    def _folder(self, video: Path, fit: Fit) -> Path:
        return self.base / _hash(os.path.realpath(video), fit.key)

    def _name(self, video: Path, st: os.stat_result, fit: Fit) -> Path:
        return self._folder(video, fit) / f"{_hash(*identity(st))}.frames"

    def lookup(self, video: Path, st: os.stat_result, fit: Fit) -> Entry | None:
        path = self._name(video, st, fit)
        try:
            entry = self._read_header(path, video, st, fit)
        except FileNotFoundError:
            entry = None
        except (OSError, ValueError, KeyError, TypeError):
            with contextlib.suppress(OSError):
                path.unlink()  # damaged: decoded again
            entry = None
        with self._lock:
            self.stats["hits" if entry is not None else "misses"] += 1
        return entry

    def drop(self, entry: Entry) -> None:
        with contextlib.suppress(OSError):
            entry.path.unlink()

    def _read_header(self, path: Path, video: Path, st: os.stat_result, fit: Fit) -> Entry | None:
        with open(path, "rb") as fh:
            head = json.loads(fh.read(HEADER).rstrip(b" \n\0"))
            size = os.fstat(fh.fileno()).st_size
        shape = tuple(int(v) for v in head["shape"])
        end = int(head["end"])
        if (head["version"], head["fit"], head["source"], head["identity"]) != \
                (VERSION, fit.key, os.path.realpath(video), identity(st)):
            return None
        if size != HEADER + end * int(np.prod(shape)):
            raise ValueError("size does not match the header")
        return Entry(path, int(head["count"]), end, frozenset(head["holes"]), shape)

    # -- writing -----------------------------------------------------------------------------------

    def fill(self, video: Path, st: os.stat_result, fit: Fit, reader) -> Entry | None:
        """Decode every frame of `reader` (an `AvVideo` at its start) into a new entry; None when this
        cannot be done now (cache not writable or full, or another writer is on it)."""
        if not self.writable or self.full:
            return None
        index = reader.index
        h, w = fit.shape(index.height, index.width) if index.height and index.width else (0, 0)
        need = index.count * h * w * 3
        if not self._room(need):
            return None
        folder = self._folder(video, fit)
        final = self._name(video, st, fit)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with open(folder / ".lock", "a+b") as lock:
                try:
                    fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    return None  # another thread or process is writing it
                try:
                    entry = self._read_header(final, video, st, fit)  # written while we waited for the lock
                except (OSError, ValueError, KeyError, TypeError):
                    entry = None
                if entry is None:
                    entry = self._write(final, video, st, fit, reader)
                    for old in folder.glob("*.frames"):
                        if old != final:
                            with contextlib.suppress(OSError):
                                old.unlink()  # the video changed since that entry was written
        except _Skip:
            return None
        except (OSError, VidcliError) as exc:
            self._refuse(exc)
            return None
        if entry is not None:
            with self._lock:
                self.stats["fills"] += 1
        return entry

    def _write(self, final: Path, video: Path, st: os.stat_result, fit: Fit, reader) -> Entry | None:
        from vidcli.video.avreader import to_array

        holes: list[int] = []
        shape: tuple[int, ...] | None = None
        written = 0
        with fsio.atomic_path(final) as tmp, open(tmp, "wb") as fh:
            fh.seek(HEADER)
            for i, frame in reader.frames(0):
                arr = to_array(frame, fit, reader.scaler)
                if shape is None:
                    shape = arr.shape
                elif arr.shape != shape:
                    raise _Skip  # the picture size changes mid-stream: not cached
                if i > written:
                    holes.extend(range(written, i))
                    fh.write(bytes(arr.nbytes * (i - written)))
                fh.write(arr.tobytes())
                written = i + 1
            header = json.dumps({"version": VERSION, "fit": fit.key, "source": os.path.realpath(video),
                                 "identity": identity(st), "count": reader.index.count, "end": written,
                                 "holes": holes, "shape": list(shape or (0, 0, 3))}).encode()
            if shape is None or len(header) >= HEADER or identity(video.stat()) != identity(st):
                raise _Skip  # nothing decoded, too damaged to describe, or the video changed meanwhile
            fh.seek(0)
            fh.write(header.ljust(HEADER, b" "))
        with self._lock:
            self._used = (self._used or 0) + HEADER + written * int(np.prod(shape))
            self._written += 1
        return Entry(final, reader.index.count, written, frozenset(holes), tuple(shape))

    # -- limits ------------------------------------------------------------------------------------

    def _room(self, need: int) -> bool:
        with self._lock:
            if self._used is None or self._written >= RESCAN_EVERY:
                self._used, self._written = _size_of(self.base), 0
            used = self._used
        if used + need > self.limit:
            self._say("limit", f"frame cache: {self.root} reached its limit of {self.limit / (1 << 30):g} GB "
                               "(data.cache_limit_gb); videos not cached yet are decoded every epoch")
            return False
        try:
            free = shutil.disk_usage(self.base if self.base.exists() else self.root.parent).free
        except OSError:
            free = 0
        if free - need < RESERVE:
            self._say("disk", f"frame cache: disk short at {self.root} ({free / (1 << 30):.1f} GB free); "
                              "videos not cached yet are decoded every epoch")
            return False
        return True

    def _refuse(self, exc: Exception) -> None:
        cause = exc.__cause__ if isinstance(exc, VidcliError) and exc.__cause__ else exc
        reason = getattr(cause, "strerror", None) or str(cause)
        if isinstance(cause, OSError) and cause.errno in (errno.ENOSPC, errno.EDQUOT):
            self.full = True
            self._say("disk", f"frame cache: disk full at {self.root}; videos not cached yet are decoded "
                              "every epoch")
            return
        self.writable = False
        self._say("write", f"frame cache: cannot write {self.root} ({reason}); training continues without it")

    def _say(self, what: str, message: str) -> None:
        with self._lock:
            if what in self._said:
                return
            self._said.add(what)
        warn(message)


class _Skip(Exception):
    pass


def _size_of(folder: Path) -> int:
    total = 0
    try:
        with os.scandir(folder) as groups:
            for g in groups:
                if g.is_dir(follow_symlinks=False):
                    with os.scandir(g.path) as files:
                        total += sum(f.stat().st_size for f in files if f.name.endswith(".frames"))
    except OSError:
        pass
    return total
