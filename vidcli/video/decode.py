"""Read clips from video files: `frames` frames every `frame_step` frames, sized for the model, RGB uint8.

PyAV decodes (`avreader`: exact key-frame seeks, one open per clip, frames scaled inside FFmpeg); a file
PyAV cannot open falls back to OpenCV (`cvreader`), and `VIDCLI_DECODER=opencv` forces that fallback
(benchmarks compare the two). The frame count a clip is placed in comes from the container's packet
index, never from the header's claim; when the frames run out before the index says, the positions are
chosen again from the true length. Training, evaluation, `predict`, `iter_frames` and the decoded-frame
cache all go through `read_frames`, so they cut the same frames.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vidcli.errors import VidcliError
from vidcli.video import cvreader
from vidcli.video.cvreader import to_rgb  # noqa: F401  (part of this module's interface)
from vidcli.video.fit import Fit

VIDEO_EXTENSIONS = frozenset({".avi", ".mp4", ".mkv", ".mov", ".webm", ".mpg", ".mpeg", ".m4v", ".wmv", ".flv"})


@dataclass(frozen=True)
class VideoInfo:
    path: Path
    width: int
    height: int
    fps: float
    reported_frames: int


def check_file(path: str | Path) -> tuple[Path, os.stat_result]:
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise VidcliError(f"{p}: file not found") from None
    except OSError as exc:
        raise VidcliError(f"{p}: not readable ({exc.strerror or exc})") from None
    if p.is_dir():
        raise VidcliError(f"{p}: is a folder, not a video")
    if st.st_size == 0:
        raise VidcliError(f"{p}: empty file (0 bytes)")
    return p, st


def decoder() -> str:
    """`pyav` (default, OpenCV for files it cannot open) or `opencv`, from VIDCLI_DECODER."""
    name = os.environ.get("VIDCLI_DECODER", "pyav").strip().lower() or "pyav"
    if name not in ("pyav", "opencv"):
        raise VidcliError(f"VIDCLI_DECODER: expected pyav or opencv, got {name!r}")
    return name


def open_video(p: Path, st: os.stat_result):
    """An `AvVideo`, or None when OpenCV must read this file."""
    if decoder() == "opencv":
        return None
    from vidcli.video.avreader import AvVideo, CannotOpen

    try:
        return AvVideo(p, st)
    except CannotOpen:
        return None


def _unreadable(p: Path, exc: Exception) -> VidcliError:
    return VidcliError(f"{p}: not a readable video ({str(exc).splitlines()[0][:120] or type(exc).__name__})")


def _no_frames(p: Path) -> VidcliError:
    return VidcliError(f"{p}: no decodable frames (corrupt or truncated video)")


def probe(path: str | Path) -> VideoInfo:
    """Size, frame rate and the frame count the container claims (a hint: headers lie)."""
    p, st = check_file(path)
    video = open_video(p, st)
    if video is None:
        return VideoInfo(p, *cvreader.probe(p))
    with video:
        i = video.index
        return VideoInfo(p, i.width, i.height, i.fps, i.reported)


def resize_with_pad(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Fit `frame` inside (height, width) keeping its aspect ratio; pad the rest with black, centred."""
    return Fit("pad", tuple(size)).apply(frame)


def iter_frames(path: str | Path, size: tuple[int, int] | None = None, fit: Fit | None = None) -> Iterator[np.ndarray]:
    """Every decodable frame of a video as RGB uint8, in order; letterboxed to `size` when given (or sized by
    `fit`), by the same rule clips are read with. Raises if none decodes."""
    p, st = check_file(path)
    fit = fit or (Fit("pad", tuple(size)) if size is not None else Fit())
    n = 0
    video = open_video(p, st)
    if video is not None:
        from vidcli.video.avreader import av, to_array

        with video:
            try:
                for _, frame in video.frames(0):
                    n += 1
                    yield to_array(frame, fit, video.scaler)
            except av.FFmpegError as exc:
                raise _unreadable(p, exc) from None
    if n == 0:
        for frame in cvreader.iter_frames(p, fit):
            n += 1
            yield frame
    if n == 0:
        raise _no_frames(p)


Pick = Callable[[int], np.ndarray]


def sample(length: int, pick: Pick, fetch) -> tuple[np.ndarray, dict[int, np.ndarray], int]:
    """Positions `pick(length)` and the frames `fetch` finds there; when the frames ran out before the
    last position (`fetch` returns where they ended), the positions are picked again from that length
    (once more if that found nothing: OpenCV can confirm a seek past the end of a lying header)."""
    for attempt in range(3):
        idx = np.asarray(pick(length), dtype=np.int64)
        want = idx.ravel().tolist()
        got, end = fetch(want)
        if all(p in got for p in want) or end is None or end >= length or end == 0 or attempt == 2 \
                or (attempt == 1 and got):
            break
        length = end
    return idx, got, length


def read_frames(path: str | Path, pick: Pick, fit: Fit, cache=None) -> tuple[np.ndarray, dict[int, np.ndarray], int]:
    """(positions, frames by position, video length): the sampling core every reader shares.

    With a `cache` (see `vidcli.video.cache`), a video's frames are decoded once and later reads touch only
    the frames they need; the positions and frames are the same as without it.
    """
    p, st = check_file(path)
    if cache is not None:
        entry = cache.lookup(p, st, fit)
        if entry is not None:
            try:
                return _checked(p, sample(entry.count, pick, entry.fetch))
            except OSError:
                cache.drop(entry)  # damaged or removed under us: decoded again below
    video = open_video(p, st)
    if video is not None:
        from vidcli.video.avreader import av

        with video:
            try:
                entry = cache.fill(p, st, fit, video) if cache is not None else None
                if entry is not None:
                    try:
                        return _checked(p, sample(entry.count, pick, entry.fetch))
                    except OSError:
                        cache.drop(entry)

                def fetch(want):
                    got, ended = video.read(want, fit)
                    return got, video.end if ended else None

                result = sample(video.index.count, pick, fetch)
            except av.FFmpegError as exc:
                raise _unreadable(p, exc) from None
        if result[1]:
            return result
    return _checked(p, _read_opencv(p, pick, fit))


def _checked(p: Path, result: tuple) -> tuple:
    if not result[1]:
        raise _no_frames(p)
    return result


def _read_opencv(p: Path, pick: Pick, fit: Fit) -> tuple[np.ndarray, dict[int, np.ndarray], int]:
    length = cvreader.probe(p)[3] or sum(1 for _ in cvreader.iter_frames(p, Fit()))

    def fetch(want):
        got, seen, ended = cvreader.read_positions(p, want, fit)
        return got, seen if ended else None

    return sample(length, pick, fetch)


def clip_span(frames: int, frame_step: int) -> int:
    return 1 + (frames - 1) * frame_step


def choose_starts(length: int, span: int, clips: int, start: str | int, rng: np.random.Generator | None) -> list[int]:
    """Start frames for `clips` clips of `span` frames in a video of `length` frames.

    `start`: "random" (training), "center" (evaluation), or a fixed frame index. Several clips are
    spread evenly over the video (the long-video prediction mode).
    """
    room = max(length - span, 0)
    if clips > 1:
        return [round(room * i / (clips - 1)) for i in range(clips)]
    if start == "random":
        return [int((rng or np.random.default_rng()).integers(0, room + 1))]
    if start == "center":
        return [room // 2]
    return [min(int(start), room)]


def read_clips(
    path: str | Path,
    frames: int,
    frame_step: int,
    size: tuple[int, int],
    *,
    clips: int = 1,
    start: str | int = "center",
    rng: np.random.Generator | None = None,
    cache=None,
) -> np.ndarray:
    """`clips` clips of `frames` frames from one video: uint8 array (clips, frames, H, W, 3).

    Clips shorter than needed are padded by repeating their last frame.
    """
    if frames < 1 or frame_step < 1:
        raise VidcliError(f"frames and frame_step must be >= 1 (got {frames}, {frame_step})")
    span = clip_span(frames, frame_step)

    def pick(length: int) -> np.ndarray:
        starts = choose_starts(length, span, clips, start, rng)
        return np.asarray([[s + i * frame_step for i in range(frames)] for s in starts], dtype=np.int64)

    idx, got, _ = read_frames(path, pick, Fit("pad", tuple(size)), cache)
    return _assemble(got, idx)


def _assemble(got: dict[int, np.ndarray], idx: np.ndarray) -> np.ndarray:
    """Frames at positions (clips, frames); a missing one repeats the clip's previous frame."""
    first = next(iter(got.values()))
    out = np.empty(idx.shape + first.shape, dtype=np.uint8)
    have = sorted(got)
    for c, row in enumerate(idx.tolist()):
        prev = None
        for i, p in enumerate(row):
            if p in got:
                prev = got[p]
            elif prev is None:
                earlier = [k for k in have if k <= p]
                prev = got[earlier[-1] if earlier else have[0]]
            out[c, i] = prev
    return out


def read_clip(path: str | Path, frames: int, frame_step: int, size: tuple[int, int], **kw) -> np.ndarray:
    """One clip, uint8 (frames, H, W, 3). See `read_clips`."""
    return read_clips(path, frames, frame_step, size, clips=1, **kw)[0]
