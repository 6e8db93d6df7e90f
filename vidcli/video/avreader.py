"""Decoding with PyAV: one open per clip, exact key-frame seeks, frames scaled inside FFmpeg.

Frames are numbered as a forward read numbers them (OpenCV's numbering; tested frame for frame). Every packet
is tagged with its decode position, and a picture belongs to the group of the key frame at or before its
packet: the pictures of the group starting at key frame k are frames k, k+1, ... in the order they come out.
Groups are coded independently, except "open" ones whose first pictures (shown before the key frame) lean on
the previous group; for those the decoder starts one group earlier. So a seek gives exactly the frames a full
pass gives, and a clip read by seeking, one read from the decoded-frame cache and `iter_frames` agree. A group
that decodes fewer pictures than it has packets leaves a hole at its end, which the samplers fill with the
previous frame, as they fill a clip that runs past the end.

The frame count comes from the packets (one demuxing pass per file, no decoding, remembered per process),
never from a header's claim.

A clip needs few of the pictures it decodes. For H.264 and MPEG-4 part 2 the decoder is told, packet by
packet, to drop the pictures no other picture refers to (FFmpeg's skip_frame NONREF: H.264's nal_ref_idc 0,
MPEG-4's B-frames) unless the clip wants them; reference pictures decode as always, so a kept frame has the
same pixels. A dropped picture never comes out to be counted, so these reads take their frame numbers from
the reads that decoded everything: each reading that decodes every picture notes the number it gave each
packet (all readings give the same, whichever key frame they start at), and a clip whose frames all have a
known packet skips. A wanted frame missing, frames out of order, a picture nobody numbered or a damaged one
(concealment may draw on any picture) send the read back to decoding everything, and skipping stays off
for that file. VIDCLI_DECODE_SKIP=0 turns it off.
"""

from __future__ import annotations

import bisect
import os
import re
import sys
import threading
from array import array
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import av.logging
import numpy as np
from av.video.reformatter import VideoReformatter

from vidcli.video.fit import Fit

av.logging.set_level(None)  # FFmpeg's own messages: we report problems in one line of our own

_active = 0  # videos being decoded in this process right now
_parallel = False  # several were decoded at once here: a data pipeline
_active_lock = threading.Lock()


def decode_threads() -> int:
    """Threads for one decoder: FFmpeg's choice (one per core) when it decodes alone, one in a data pipeline
    (tf.data's parallel map, DataLoader workers), where more only fight over the cores: on 2 cores a second
    thread per decoder cost 30% more CPU per clip. VIDCLI_DECODE_THREADS overrides."""
    global _parallel
    env = os.environ.get("VIDCLI_DECODE_THREADS", "").strip()
    if env:
        return max(0, int(env))
    _parallel = _parallel or _active > 1
    if _parallel:
        return 1
    torch_data = sys.modules.get("torch.utils.data")
    if torch_data is not None and torch_data.get_worker_info() is not None:
        return 1
    return 0


class CannotOpen(Exception):
    """PyAV cannot read this file; the caller falls back to OpenCV."""


class _Unsure(Exception):
    """A read that skipped pictures cannot vouch for a frame number: read again, decoding everything."""


SKIPPABLE = frozenset({"h264", "mpeg4"})  # decoders whose NONREF discard drops only pictures nothing refers to
# DivX/Xvid "packed" B-frames (FFmpeg's own test): a B-frame rides in the packet before the one it comes out
# of, so skipping one packet changes what another gives; such files decode everything.
PACKED = re.compile(rb"DivX\d+(?:Build|b)\d+p")


def skipping() -> bool:
    return os.environ.get("VIDCLI_DECODE_SKIP", "1").strip() != "0"


class Numbers:
    """Frame number <-> packet as the readings that decode every picture found them; -1 where none has
    been yet. Readings that disagree (a decoder whose output depends on where it started) turn skipping off."""

    def __init__(self, count: int):
        self.of_packet = array("i", [-1]) * count
        self.packet_of = array("i", [-1]) * count
        self.usable = True
        self._lock = threading.Lock()

    def learn(self, packet: int, n: int) -> None:
        with self._lock:
            if self.of_packet[packet] == -1 and self.packet_of[n] == -1:
                self.of_packet[packet], self.packet_of[n] = n, packet
            elif self.of_packet[packet] != n or self.packet_of[n] != packet:
                self.usable = False

    def known(self, frames: Iterable[int]) -> bool:
        return self.usable and all(0 <= t < len(self.packet_of) and self.packet_of[t] >= 0 for t in frames)


@dataclass(frozen=True)
class Index:
    count: int  # video packets: the length frames are picked from
    keys: tuple[int, ...]  # decode positions of key frames, 0 first
    key_dts: tuple[int | None, ...]
    key_pts: tuple[int | None, ...]
    leading: dict[int, frozenset[int]]  # open groups: key -> packets of pictures shown before the key frame
    width: int
    height: int
    fps: float
    reported: int  # what the header claims
    numbers: Numbers | None = None  # where skipping pictures is possible

    def key_of(self, i: int) -> int:
        return self.keys[max(0, bisect.bisect_right(self.keys, i) - 1)]

    def next_key(self, k: int) -> int:
        j = bisect.bisect_right(self.keys, k)
        return self.keys[j] if j < len(self.keys) else self.count

    def start_for(self, i: int) -> int:
        """The key frame to start decoding at for frame i: its group's, or the one before when frame i is one
        of the pictures an open group shows before its key frame (they lean on the previous group)."""
        k = self.key_of(i)
        return self.key_of(k - 1) if i < k + len(self.leading.get(k, ())) else k

    @property
    def seekable(self) -> bool:
        """Key frames can be found by their decode timestamps: all known and strictly increasing."""
        dts = self.key_dts[1:]
        return all(d is not None for d in dts) and all(a < b for a, b in zip(dts, dts[1:], strict=False))


_INDEX: OrderedDict[tuple, Index] = OrderedDict()
_INDEX_LOCK = threading.Lock()
_INDEX_MAX = 16384
LEADING = 16  # packets after a key frame checked for pictures shown before it


def file_id(path: Path, st: os.stat_result) -> tuple:
    """What identifies a file's content well enough to reuse its index: a rewrite changes ctime at least."""
    return (str(path), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


class AvVideo:
    """One open video file. Not thread-safe: open one per clip (opening is cheap, the index is remembered)."""

    def __init__(self, path: Path, st: os.stat_result):
        global _active
        self.path = path
        self._key = file_id(path, st)
        self.scaler = VideoReformatter()  # keeps FFmpeg's scaler set up from frame to frame
        self.end: int | None = None
        with _active_lock:
            _active += 1
        try:
            self._open()
            self.index = self._remembered_index()
        except BaseException:
            self.close()
            raise
        self._keyset = frozenset(self.index.keys)

    def _open(self) -> None:
        try:
            self.container = av.open(str(self.path))
        except (av.FFmpegError, OSError, UnicodeError, ValueError) as exc:
            self.container = None
            raise CannotOpen(str(exc)) from None
        if not self.container.streams.video:
            raise CannotOpen("no video stream")
        self.stream = self.container.streams.video[0]
        self.stream.thread_type = "AUTO"
        self.stream.thread_count = decode_threads()
        self.stream.codec_context.copy_opaque = True  # frames carry their packet's decode position
        self._pending: av.Packet | None = None
        self._fresh = True

    def _shut(self) -> None:
        """Close the file, the decoder's threads parked first (without the GIL): freeing a decoder whose
        threads still work deadlocks when one of them drops a tagged frame (that needs the GIL)."""
        stream = getattr(self, "stream", None)
        if stream is not None:
            stream.codec_context.flush_buffers()
        self.container.close()

    def close(self) -> None:
        global _active
        if getattr(self, "container", None) is not None:
            self._shut()
            self.container = None
        if self.scaler is not None:
            self.scaler = None
            with _active_lock:
                _active -= 1

    def __enter__(self) -> AvVideo:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _remembered_index(self) -> Index:
        with _INDEX_LOCK:
            index = _INDEX.get(self._key)
            if index is not None:
                _INDEX.move_to_end(self._key)
                return index
        index = self._build_index()
        with _INDEX_LOCK:
            _INDEX[self._key] = index
            while len(_INDEX) > _INDEX_MAX:
                _INDEX.popitem(last=False)
        return index

    def _build_index(self) -> Index:
        rows: list[tuple[int | None, int | None, bool]] = []
        head = bytes(self.stream.codec_context.extradata or b"")
        try:
            for pkt in self.container.demux(self.stream):
                if pkt.size:
                    if not rows:
                        head += bytes(pkt)
                    rows.append((pkt.dts, pkt.pts, pkt.is_keyframe))
        except av.FFmpegError:
            pass
        keys = [i for i, row in enumerate(rows) if row[2]]
        if not keys or keys[0] != 0:
            keys = [0, *keys]
        leading = {}
        for k in keys[1:]:
            pts = rows[k][1]
            lead = frozenset(j for j in range(k + 1, min(k + LEADING, len(rows)))
                             if pts is not None and rows[j][1] is not None and rows[j][1] < pts and not rows[j][2])
            if lead:
                leading[k] = lead
        cc = self.stream.codec_context
        rate = self.stream.average_rate or self.stream.guessed_rate
        stamps = [rows[k] if k < len(rows) else (None, None, True) for k in keys]
        numbers = Numbers(len(rows)) if cc.name in SKIPPABLE and not PACKED.search(head) else None
        index = Index(len(rows), tuple(keys), tuple(r[0] for r in stamps), tuple(r[1] for r in stamps),
                      leading, cc.width, cc.height, float(rate or 0.0), int(self.stream.frames or 0), numbers)
        self._restart()
        return index

    # -- positioning -------------------------------------------------------------------------------

    def _restart(self) -> int:
        self._shut()
        self._open()
        return 0

    def _seek(self, key: int) -> int:
        """Make the next packet the key frame `key`, or an earlier one the index knows; returns which.

        Containers seek by presentation time (MP4 with an edit list lands a whole group early when given
        the decode time) or by decode time (AVI), so the key frame's pts is tried, then its dts; the first
        packet read must be a key frame of the index. Anything else falls back to reading from the start.
        """
        if key == 0 or not self.index.seekable:
            return 0 if self._fresh else self._restart()
        at = self.index.keys.index(key)
        known = dict(zip(self.index.key_dts, self.index.keys, strict=True))
        landed = None
        for stamp in dict.fromkeys((self.index.key_pts[at], self.index.key_dts[at])):
            if stamp is None:
                continue
            try:
                self.container.seek(stamp, stream=self.stream, backward=True, any_frame=False)
                self.stream.codec_context.flush_buffers()
                first = next(p for p in self.container.demux(self.stream) if p.size)
            except (av.FFmpegError, StopIteration):
                landed = None
                continue
            self._fresh = False
            reached = known.get(first.dts) if first.dts is not None else None
            landed = (reached, first) if reached is not None and reached <= key else None
            if reached == key:
                break
        if landed is None:
            return self._restart()
        self._pending = landed[1]
        return landed[0]

    def _packets(self) -> Iterator[av.Packet]:
        if self._pending is not None:
            pkt, self._pending = self._pending, None
            yield pkt
        yield from self.container.demux(self.stream)

    # -- decoding ----------------------------------------------------------------------------------

    def frames(self, start: int = 0, trusted: int = 0) -> Iterator[tuple[int, av.VideoFrame]]:
        """(index, frame) in order, decoding from the key frame `start` to the end of the stream (which sets
        `end`); frames of groups before the key frame `trusted` (decoded only as references) are left out.
        Starting right at an open group, its leading pictures (which would need the group before) are left
        out too and the rest keep their numbers."""
        index = self.index
        pos = self._seek(start)
        self._fresh = False
        cc = self.stream.codec_context
        cc.skip_frame = "DEFAULT"
        lead = index.leading.get(pos, frozenset()) if pos > 0 else frozenset()
        made: dict[int, int] = {pos: len(lead)}

        def numbered(frames: list) -> Iterator[tuple[int, av.VideoFrame]]:
            for f in frames:
                if index.numbers is not None and f.is_corrupt:
                    index.numbers.usable = False  # concealment may draw on pictures a skipping read leaves out
                j = _position(f, pos - 1)
                group = index.key_of(j)
                if group < trusted or j in lead:
                    continue
                r = made.get(group, 0)
                if r < index.next_key(group) - group:
                    made[group] = r + 1
                    if index.numbers is not None and j == _position(f, -1):
                        index.numbers.learn(j, group + r)
                    yield group + r, f

        packets = self._packets()
        while pos < index.count:
            try:
                pkt = next(packets)
            except (StopIteration, av.FFmpegError):
                break
            if not pkt.size:
                continue
            pkt.opaque = (pos,)
            pos += 1
            yield from numbered(_decode(cc, pkt))
        yield from numbered(_decode(cc, None))
        last = index.key_of(max(pos - 1, 0))
        self.end = last + made.get(last, 0)

    def _sparse(self, start: int, want: set[int], first: int) -> Iterator[tuple[int, av.VideoFrame]]:
        """The wanted frames from `first` on, decoding from the key frame `start` as `frames` does, but with
        the pictures no wanted frame is (all references decode) skipped, and numbered from `Numbers`."""
        index = self.index
        number = index.numbers.of_packet
        pos = self._seek(start)
        self._fresh = False
        cc = self.stream.codec_context
        lead = index.leading.get(pos, frozenset()) if pos > 0 else frozenset()
        trusted = index.key_of(first)

        def aside(j: int) -> bool:  # decoded only as a reference, as in `frames`
            return index.key_of(j) < trusted or j in lead

        targets = iter(sorted(t for t in want if t >= first))
        t, last = next(targets), -1
        packets = self._packets()
        try:
            while True:
                pkt = _next(packets) if pos < index.count else None
                if pkt is not None:
                    if not pkt.size:
                        continue
                    pkt.opaque = (pos,)
                    n = number[pos]
                    keep = n in want if n >= 0 else not aside(pos)
                    cc.skip_frame = "DEFAULT" if keep else "NONREF"
                    pos += 1
                for f in _decode(cc, pkt):
                    if f.is_corrupt:
                        raise _Unsure
                    j = _position(f, -1)
                    if j >= 0 and aside(j):
                        continue
                    n = number[j] if j >= 0 else -1
                    if n <= last or n > t:
                        raise _Unsure  # not numbered, out of order, or a wanted frame never came
                    last = n
                    if n == t:
                        yield n, f
                        t = next(targets, None)
                        if t is None:
                            return
                if pkt is None:
                    raise _Unsure  # the stream ended first
        finally:
            cc.skip_frame = "DEFAULT"

    def read(self, wanted: Iterable[int], fit: Fit) -> tuple[dict[int, np.ndarray], bool]:
        """The frames at `wanted` positions (those that decode), and whether the stream ran out looking
        for one. Groups between wanted frames are skipped by seeking; skipped frames are never converted,
        and where `Numbers` allows, pictures no wanted frame needs are not even decoded."""
        want = set(wanted)
        numbers = self.index.numbers
        if numbers is not None and skipping() and numbers.known(want):
            try:
                return self._read(want, fit, True)
            except _Unsure:
                numbers.usable = False
        return self._read(want, fit, False)

    def _read(self, want: set[int], fit: Fit, sparse: bool) -> tuple[dict[int, np.ndarray], bool]:
        got: dict[int, np.ndarray] = {}
        gen = None
        nxt = 0
        index = self.index
        for t in sorted(want):
            if gen is not None and t < nxt:
                continue  # a hole: its group decoded fewer frames
            if gen is None or index.start_for(t) > index.key_of(nxt):
                if gen is not None:
                    gen.close()
                start = index.start_for(t)
                gen = self._sparse(start, want, t) if sparse else self.frames(start, index.key_of(t))
            for i, frame in gen:
                nxt = i + 1
                if i in want:
                    got[i] = to_array(frame, fit, self.scaler)
                if i >= t:
                    break
            else:
                return got, True
        if gen is not None:
            gen.close()
        return got, False


def _position(frame: av.VideoFrame, unknown: int) -> int:
    """The decode position a frame's packet was tagged with. A tag is a fresh tuple, not the int: PyAV files
    tags under id(), which small ints share, so another decoder's dropping the same number lost the tag."""
    tag = frame.opaque
    return tag[0] if isinstance(tag, tuple) else unknown


def _next(packets: Iterator[av.Packet]) -> av.Packet | None:
    try:
        return next(packets)
    except (StopIteration, av.FFmpegError):
        return None


def _decode(cc, pkt) -> list:
    try:
        return cc.decode(pkt)
    except av.FFmpegError:  # a damaged packet: its picture is lost, the stream goes on
        return []


def to_array(frame: av.VideoFrame, fit: Fit, scaler: VideoReformatter | None = None) -> np.ndarray:
    """RGB uint8 under `fit`. Shrinking happens in FFmpeg's scaler straight from the decoder's pixel
    format (area averaging, ~4x cheaper than converting at full size and resizing); enlarging and
    same-size frames convert at full size and resize with OpenCV, exactly as `Fit.apply`."""
    h, w = frame.height, frame.width
    scaler = scaler or VideoReformatter()
    if fit.kind != "none" and fit.shrinks(h, w):
        nh, nw = fit.scaled(h, w)
        small = scaler.reformat(frame, width=nw, height=nh, format="rgb24", interpolation="AREA", threads=1)
        return fit.place(small.to_ndarray())
    return fit.apply(scaler.reformat(frame, format="rgb24", threads=1).to_ndarray())
