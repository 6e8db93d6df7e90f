"""Decode clips with OpenCV and sample `frames` frames every `frame_step` frames.

Containers lie about their length (an AVI header can announce 444 frames and hold 68), so the
reported frame count is only a hint: frames are read sequentially and the true length is whatever
actually decodes. Frames come back as uint8 RGB, resized with padding to the model size; the
conversion to float happens in the model's input pipeline, where it is cheap.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import vidcli.video  # noqa: F401  (quiets FFmpeg before cv2 loads)

# isort: split
import cv2

from vidcli.errors import VidcliError

VIDEO_EXTENSIONS = frozenset({".avi", ".mp4", ".mkv", ".mov", ".webm", ".mpg", ".mpeg", ".m4v", ".wmv", ".flv"})


@dataclass(frozen=True)
class VideoInfo:
    path: Path
    width: int
    height: int
    fps: float
    reported_frames: int


def _open(path: str | Path) -> cv2.VideoCapture:
    p = Path(path)
    if not p.exists():
        raise VidcliError(f"{p}: file not found")
    if p.is_dir():
        raise VidcliError(f"{p}: is a folder, not a video")
    if p.stat().st_size == 0:
        raise VidcliError(f"{p}: empty file (0 bytes)")
    cap = cv2.VideoCapture(str(p))
    if not cap.isOpened():
        cap.release()
        raise VidcliError(f"{p}: not a readable video (corrupt or unsupported format)")
    return cap


def probe(path: str | Path) -> VideoInfo:
    cap = _open(path)
    try:
        return VideoInfo(
            Path(path),
            int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)),
            int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)),
            float(cap.get(cv2.CAP_PROP_FPS) or 0.0),
            max(int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0), 0),
        )
    finally:
        cap.release()


def to_rgb(frame: np.ndarray) -> np.ndarray:
    """OpenCV frames in any channel layout (gray, BGR, BGRA) to RGB uint8."""
    if frame.ndim == 2 or frame.shape[-1] == 1:
        return cv2.cvtColor(frame, cv2.COLOR_GRAY2RGB)
    if frame.shape[-1] == 4:
        return cv2.cvtColor(frame, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)


def resize_with_pad(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Fit `frame` inside (height, width) keeping its aspect ratio; pad the rest with black, centred."""
    th, tw = size
    h, w = frame.shape[:2]
    if (h, w) == (th, tw):
        return frame
    scale = min(th / h, tw / w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    resized = cv2.resize(frame, (nw, nh), interpolation=interp)
    if (nh, nw) == (th, tw):
        return resized
    out = np.zeros((th, tw) + frame.shape[2:], dtype=frame.dtype)
    top, left = (th - nh) // 2, (tw - nw) // 2
    out[top : top + nh, left : left + nw] = resized
    return out


def iter_frames(path: str | Path) -> Iterator[np.ndarray]:
    """Every decodable frame of a video as RGB uint8, in order. Raises if none decodes."""
    cap = _open(path)
    n = 0
    try:
        while True:
            ok, frame = cap.read()
            if not ok or frame is None:
                break
            n += 1
            yield to_rgb(frame)
    finally:
        cap.release()
    if n == 0:
        raise VidcliError(f"{path}: no decodable frames (corrupt or truncated video)")


SEEK_GAP = 48  # frames; below this, decoding forward is cheaper than a seek


def _read_positions(
    path: str | Path, positions: Sequence[int], size: tuple[int, int], seek: bool = True
) -> tuple[dict[int, np.ndarray], int, bool]:
    """Read the frames at `positions` in one forward pass.

    Returns (frames by position, frames seen, reached end of stream). Unwanted frames are only
    grabbed, never converted; a far jump seeks instead. A seek is trusted only when the container
    confirms the position and the frame then decodes: otherwise the pass is redone without seeking,
    which also measures the true length of a file whose header lies.
    """
    wanted = sorted(set(positions))
    got: dict[int, np.ndarray] = {}
    cap = _open(path)
    pos = 0
    ended = False
    try:
        for target in wanted:
            seeked = False
            if seek and target - pos > SEEK_GAP:
                seeked = cap.set(cv2.CAP_PROP_POS_FRAMES, target) and int(cap.get(cv2.CAP_PROP_POS_FRAMES)) == target
                if seeked:
                    pos = target
                else:
                    break
            while pos < target:
                if not cap.grab():
                    ended = True
                    break
                pos += 1
            if ended:
                break
            ok, frame = cap.read()
            if not ok or frame is None:
                if seeked:
                    break
                ended = True
                break
            got[target] = resize_with_pad(to_rgb(frame), size)
            pos += 1
        else:
            return got, pos, ended
        if ended:
            return got, pos, ended
    finally:
        cap.release()
    return _read_positions(path, positions, size, seek=False)


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
) -> np.ndarray:
    """`clips` clips of `frames` frames from one video: uint8 array (clips, frames, H, W, 3).

    Clips shorter than needed are padded by repeating their last frame. The container's frame count
    picks the positions; when the video turns out shorter, the positions are chosen again from the
    true length (a second pass, only for files whose header lies).
    """
    if frames < 1 or frame_step < 1:
        raise VidcliError(f"frames and frame_step must be >= 1 (got {frames}, {frame_step})")
    span = clip_span(frames, frame_step)
    hint = probe(path).reported_frames
    length = hint if hint > 0 else span
    for attempt in range(2):
        starts = choose_starts(length, span, clips, start, rng)
        positions = [s + i * frame_step for s in starts for i in range(frames)]
        got, seen, ended = _read_positions(path, positions, size)
        if not got:
            if seen > 0 and attempt == 0:
                length = seen
                continue
            raise VidcliError(f"{path}: no decodable frames (corrupt or truncated video)")
        complete = all(p in got for p in positions)
        if complete or not ended or attempt == 1 or seen >= length:
            break
        length = seen  # the header lied: choose again from the true length
    return _assemble(got, starts, frames, frame_step)


def _assemble(got: dict[int, np.ndarray], starts: list[int], frames: int, frame_step: int) -> np.ndarray:
    first = next(iter(got.values()))
    out = np.empty((len(starts), frames) + first.shape, dtype=np.uint8)
    last_valid = min(got)
    for c, s in enumerate(starts):
        prev = None
        for i in range(frames):
            p = s + i * frame_step
            if p in got:
                prev = got[p]
            elif prev is None:
                prev = got[max(k for k in got if k <= p)] if any(k <= p for k in got) else got[last_valid]
            out[c, i] = prev
    return out


def read_clip(path: str | Path, frames: int, frame_step: int, size: tuple[int, int], **kw) -> np.ndarray:
    """One clip, uint8 (frames, H, W, 3). See `read_clips`."""
    return read_clips(path, frames, frame_step, size, clips=1, **kw)[0]
