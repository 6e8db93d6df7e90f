"""The OpenCV reader: the fallback for files PyAV cannot open (and `VIDCLI_DECODER=opencv`).

Containers lie about their length (an AVI header can announce 444 frames and hold 68), so the reported
frame count is only a hint: frames are read forward and a seek is trusted only when the container confirms
the position and the frame then decodes; otherwise the pass is redone without seeking, which also measures
the true length of a file whose header lies.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

import vidcli.video  # noqa: F401  (quiets FFmpeg before cv2 loads)

# isort: split
import cv2

from vidcli.errors import VidcliError
from vidcli.video.fit import Fit

SEEK_GAP = 48  # frames; below this, decoding forward is cheaper than a seek


def open_capture(path: Path) -> cv2.VideoCapture:
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        cap.release()
        raise VidcliError(f"{path}: not a readable video (corrupt or unsupported format)")
    return cap


def probe(path: Path) -> tuple[int, int, float, int]:
    cap = open_capture(path)
    try:
        return (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)),
                float(cap.get(cv2.CAP_PROP_FPS) or 0.0), max(int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0), 0))
    finally:
        cap.release()


def to_rgb(frame: np.ndarray) -> np.ndarray:
    """OpenCV frames in any channel layout (gray, BGR, BGRA) to RGB uint8."""
    if frame.ndim == 2 or frame.shape[-1] == 1:
        return cv2.cvtColor(frame, cv2.COLOR_GRAY2RGB)
    if frame.shape[-1] == 4:
        return cv2.cvtColor(frame, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)


def iter_frames(path: Path, fit: Fit) -> Iterator[np.ndarray]:
    cap = open_capture(path)
    try:
        while True:
            ok, frame = cap.read()
            if not ok or frame is None:
                break
            yield fit.apply(to_rgb(frame))
    finally:
        cap.release()


def read_positions(path: Path, positions: Sequence[int], fit: Fit,
                   seek: bool = True) -> tuple[dict[int, np.ndarray], int, bool]:
    """The frames at `positions` in one forward pass: (frames by position, frames seen, reached the end).

    Unwanted frames are only grabbed, never converted; a far jump seeks instead.
    """
    wanted = sorted(set(positions))
    got: dict[int, np.ndarray] = {}
    cap = open_capture(path)
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
            got[target] = fit.apply(to_rgb(frame))
            pos += 1
        else:
            return got, pos, ended
        if ended:
            return got, pos, ended
    finally:
        cap.release()
    return read_positions(path, positions, fit, seek=False)
