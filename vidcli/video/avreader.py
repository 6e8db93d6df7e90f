"""Decoding with PyAV: one open per clip, exact key-frame seeks, frames scaled inside FFmpeg.

Frames are numbered as a forward read numbers them, anchored on key frames: frame i is picture i - k of the
group that starts at the key frame k at or before i, and the decoder is drained at every key frame. A seek
to k therefore gives exactly the frames a full pass gives (tested against OpenCV's forward read), so a clip
read by seeking, one read from the decoded-frame cache and `iter_frames` agree frame for frame. A group
that decodes fewer pictures than it has packets leaves a hole at its end; the samplers fill holes with the
previous frame, as they fill a clip that runs past the end.

The frame count comes from the container's packet index (MP4/MOV sample tables; other containers are
demuxed once, without decoding, and the result is remembered per file), never from a header's claim.
"""

from __future__ import annotations

import bisect
import os
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import av.logging
import numpy as np

from vidcli.video.fit import Fit

av.logging.set_level(None)  # FFmpeg's own messages: we report problems in one line of our own

SAMPLE_TABLE_FORMATS = {"mov", "mp4"}
THREADS = max(0, int(os.environ.get("VIDCLI_DECODE_THREADS", "0") or 0))  # 0: FFmpeg picks (one per core)


class CannotOpen(Exception):
    """PyAV cannot read this file; the caller falls back to OpenCV."""


@dataclass(frozen=True)
class Index:
    count: int  # video packets: the length frames are picked from
    keys: tuple[int, ...]  # decode positions of key frames, 0 first
    key_dts: tuple[int | None, ...]
    width: int
    height: int
    fps: float
    reported: int  # what the header claims

    def key_of(self, i: int) -> int:
        return self.keys[max(0, bisect.bisect_right(self.keys, i) - 1)]

    def next_key(self, k: int) -> int:
        j = bisect.bisect_right(self.keys, k)
        return self.keys[j] if j < len(self.keys) else self.count

    @property
    def seekable(self) -> bool:
        """Key frames can be found by their decode timestamps: all known and strictly increasing."""
        dts = self.key_dts[1:]
        return all(d is not None for d in dts) and all(a < b for a, b in zip(dts, dts[1:], strict=False))


_INDEX: OrderedDict[tuple, Index] = OrderedDict()
_INDEX_LOCK = threading.Lock()
_INDEX_MAX = 16384


def file_id(path: Path, st: os.stat_result) -> tuple:
    return (str(path), st.st_size, st.st_mtime_ns, st.st_ino)


class AvVideo:
    """One open video file. Not thread-safe: open one per clip (opening is cheap, the index is remembered)."""

    def __init__(self, path: Path, st: os.stat_result):
        self.path, self.size = path, st.st_size
        self._key = file_id(path, st)
        self._open()
        self.end: int | None = None
        with _INDEX_LOCK:
            index = _INDEX.get(self._key)
            if index is not None:
                _INDEX.move_to_end(self._key)
        if index is None:
            index = self._build_index()
            with _INDEX_LOCK:
                _INDEX[self._key] = index
                while len(_INDEX) > _INDEX_MAX:
                    _INDEX.popitem(last=False)
        self.index = index
        self._keyset = frozenset(index.keys)

    def _open(self) -> None:
        try:
            self.container = av.open(str(self.path))
        except (av.FFmpegError, OSError, UnicodeError, ValueError) as exc:
            raise CannotOpen(str(exc)) from None
        if not self.container.streams.video:
            self.container.close()
            raise CannotOpen("no video stream")
        self.stream = self.container.streams.video[0]
        self.stream.thread_type = "AUTO"
        self.stream.thread_count = THREADS
        self._pending: av.Packet | None = None
        self._fresh = True

    def close(self) -> None:
        self.container.close()

    def __enter__(self) -> AvVideo:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _build_index(self) -> Index:
        rows: list[tuple[int | None, bool]] = []
        if SAMPLE_TABLE_FORMATS & set(self.container.format.name.split(",")):
            for e in self.stream.index_entries:
                if e.size <= 0:
                    continue
                if e.pos + e.size > self.size:  # a cut file lists samples it no longer holds
                    break
                rows.append((e.timestamp, bool(e.flags & 1)))
        if not rows:
            try:
                for pkt in self.container.demux(self.stream):
                    if pkt.size:
                        rows.append((pkt.dts, pkt.is_keyframe))
            except av.FFmpegError:
                pass
            self.container.close()
            self._open()
        keys = [i for i, (_, k) in enumerate(rows) if k]
        dts = [rows[i][0] for i in keys]
        if not keys or keys[0] != 0:
            keys, dts = [0, *keys], [None, *dts]
        cc = self.stream.codec_context
        rate = self.stream.average_rate or self.stream.guessed_rate
        return Index(len(rows), tuple(keys), tuple(dts), cc.width, cc.height, float(rate or 0.0),
                     int(self.stream.frames or 0))

    # -- positioning -------------------------------------------------------------------------------

    def _restart(self) -> int:
        self.container.close()
        self._open()
        return 0

    def _seek(self, key: int) -> int:
        """Make the next packet the key frame `key`, or an earlier one the index knows; returns which.
        A seek the packets do not confirm falls back to reading from the start."""
        if key == 0 or not self.index.seekable:
            return 0 if self._fresh else self._restart()
        target = self.index.key_dts[self.index.keys.index(key)]
        try:
            self.container.seek(target, stream=self.stream, backward=True, any_frame=False)
            self.stream.codec_context.flush_buffers()
            first = next(p for p in self.container.demux(self.stream) if p.size)
        except (av.FFmpegError, StopIteration):
            return self._restart()
        self._fresh = False
        known = dict(zip(self.index.key_dts, self.index.keys, strict=True))
        reached = known.get(first.dts)
        if first.dts is None or reached is None or reached > key:
            return self._restart()
        self._pending = first
        return reached

    def _packets(self) -> Iterator[av.Packet]:
        if self._pending is not None:
            pkt, self._pending = self._pending, None
            yield pkt
        yield from self.container.demux(self.stream)

    # -- decoding ----------------------------------------------------------------------------------

    def frames(self, key: int = 0) -> Iterator[tuple[int, av.VideoFrame]]:
        """(index, frame) from the key frame at or before `key` to the end of the stream, which sets `end`."""
        pos = self._seek(self.index.key_of(key))
        self._fresh = False
        cc = self.stream.codec_context
        count = self.index.count
        group, made, room = pos, 0, self.index.next_key(pos) - pos

        def numbered(frames: list) -> Iterator[tuple[int, av.VideoFrame]]:
            nonlocal made
            for f in frames:
                if made < room:
                    made += 1
                    yield group + made - 1, f

        packets = self._packets()
        while pos < count:
            try:
                pkt = next(packets)
            except (StopIteration, av.FFmpegError):
                break
            if not pkt.size:
                continue
            if pos in self._keyset and pos != group:
                yield from numbered(_decode(cc, None))
                cc.flush_buffers()
                group, made, room = pos, 0, self.index.next_key(pos) - pos
            yield from numbered(_decode(cc, pkt))
            pos += 1
        yield from numbered(_decode(cc, None))
        self.end = group + made

    def read(self, wanted: Iterable[int], fit: Fit) -> tuple[dict[int, np.ndarray], bool]:
        """The frames at `wanted` positions (those that decode), and whether the stream ran out looking
        for one. Groups between wanted frames are skipped by seeking; skipped frames are never converted."""
        want = set(wanted)
        got: dict[int, np.ndarray] = {}
        gen = None
        nxt = 0
        for t in sorted(want):
            if gen is not None and t < nxt:
                continue  # a hole: its group decoded fewer frames
            k = self.index.key_of(t)
            if gen is None or self.index.key_of(nxt) != k:
                if gen is not None:
                    gen.close()
                gen = self.frames(k)
            for i, frame in gen:
                nxt = i + 1
                if i in want:
                    got[i] = to_array(frame, fit)
                if i >= t:
                    break
            else:
                return got, True
        if gen is not None:
            gen.close()
        return got, False


def _decode(cc, pkt) -> list:
    try:
        return cc.decode(pkt)
    except av.FFmpegError:  # a damaged packet: its picture is lost, the stream goes on
        return []


def to_array(frame: av.VideoFrame, fit: Fit) -> np.ndarray:
    """RGB uint8 under `fit`. Shrinking happens in FFmpeg's scaler straight from the decoder's pixel
    format (area averaging, ~4x cheaper than converting at full size and resizing); enlarging and
    same-size frames convert at full size and resize with OpenCV, exactly as `Fit.apply`."""
    h, w = frame.height, frame.width
    if fit.kind != "none" and fit.shrinks(h, w):
        nh, nw = fit.scaled(h, w)
        small = frame.reformat(width=nw, height=nh, format="rgb24", interpolation="AREA")
        return fit.place(small.to_ndarray())
    return fit.apply(frame.to_ndarray(format="rgb24"))
