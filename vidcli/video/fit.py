"""How a decoded frame is sized for the model, one rule for every reader.

`pad` letterboxes into `size` (aspect kept, black bars centred): step sampling. `cover` scales so the
frame covers `size * ratio` and is cropped later, never padded: TSM's segment sampling. `none` keeps the
decoded size. Shrinking uses area averaging, enlarging bilinear interpolation, as the exported models'
preprocessing describes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

import vidcli.video  # noqa: F401  (quiets FFmpeg before cv2 loads)

# isort: split
import cv2


@dataclass(frozen=True)
class Fit:
    kind: str = "none"  # none | pad | cover
    size: tuple[int, int] = (0, 0)
    ratio: float = 1.0

    @property
    def key(self) -> str:
        """Names the rule in cache keys: a different size or rule never reads another's frames."""
        return f"{self.kind}-{self.size[0]}x{self.size[1]}-{self.ratio:.6f}"

    def factor(self, h: int, w: int) -> float:
        th, tw = self.size
        if self.kind == "pad":
            return min(th / h, tw / w)
        if self.kind == "cover":
            return max(th * self.ratio / h, tw * self.ratio / w)
        return 1.0

    def scaled(self, h: int, w: int) -> tuple[int, int]:
        """The size the picture is resized to (before any padding)."""
        f = self.factor(h, w)
        if self.kind == "pad":
            return max(1, round(h * f)), max(1, round(w * f))
        if self.kind == "cover":
            return max(self.size[0], round(h * f)), max(self.size[1], round(w * f))
        return h, w

    def shape(self, h: int, w: int) -> tuple[int, int]:
        """(height, width) of the frames this rule hands back."""
        return tuple(self.size) if self.kind == "pad" else self.scaled(h, w)

    def shrinks(self, h: int, w: int) -> bool:
        return self.factor(h, w) < 1

    def place(self, picture: np.ndarray) -> np.ndarray:
        """Put an already resized picture on the black canvas (`pad`), else return it as is."""
        if self.kind != "pad" or picture.shape[:2] == tuple(self.size):
            return picture
        th, tw = self.size
        nh, nw = picture.shape[:2]
        out = np.zeros((th, tw) + picture.shape[2:], dtype=picture.dtype)
        top, left = (th - nh) // 2, (tw - nw) // 2
        out[top : top + nh, left : left + nw] = picture
        return out

    def apply(self, frame: np.ndarray) -> np.ndarray:
        """The rule on a full-size RGB array (OpenCV: INTER_AREA to shrink, INTER_LINEAR to enlarge)."""
        if self.kind == "none":
            return frame
        h, w = frame.shape[:2]
        nh, nw = self.scaled(h, w)
        if (nh, nw) != (h, w):
            interp = cv2.INTER_AREA if self.shrinks(h, w) else cv2.INTER_LINEAR
            frame = cv2.resize(frame, (nw, nh), interpolation=interp)
        return self.place(frame)
