"""More real test clips: the repository's videos re-encoded with PyAV into other codecs, containers, key-frame
intervals and lengths (H.264 with a B-pyramid in MP4, MPEG-4 part 2 with B-frames and open GOPs and
MS-MPEG-4 v3 "MP43" in AVI; `encode` also writes VP9). The pictures stay real camera footage; only the
coding changes.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

# name: (source, codec, container suffix, gop, b-frames, size (w, h) or None, loops)
VARIANTS = {
    "megamind_h264": ("Megamind.avi", "libx264", ".mp4", 250, 3, None, 2),
    "box_mpeg4": ("box.mp4", "mpeg4", ".avi", 300, 2, None, 1),
    "megamind_mp43": ("Megamind.avi", "msmpeg4v3", ".avi", 100, 0, None, 2),
    "box_ucf_mpeg4": ("box.mp4", "mpeg4", ".avi", 300, 2, (320, 240), 1),
}


def frames_of(src: Path, size: tuple[int, int] | None = None, limit: int | None = None) -> list[np.ndarray]:
    with av.open(str(src)) as c:
        out = []
        for f in c.decode(video=0):
            out.append(f.to_ndarray(format="rgb24") if size is None else
                       f.reformat(width=size[0], height=size[1], format="rgb24", interpolation="AREA").to_ndarray())
            if limit and len(out) >= limit:
                break
    return out


def encode(frames: list[np.ndarray], dest: Path, codec: str, gop: int, bframes: int, fps: int = 25) -> Path:
    """Write RGB frames with `codec` (key frame every `gop` frames, up to `bframes` B-frames)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    h, w = frames[0].shape[:2]
    with av.open(str(dest), "w") as out:
        s = out.add_stream(codec, rate=Fraction(fps))
        s.width, s.height = w, h
        s.pix_fmt = "yuv420p"
        s.codec_context.gop_size = gop
        if codec == "libx264":
            s.options = {"preset": "veryfast", "bf": str(bframes), "keyint_min": str(min(gop, 25))}
        elif codec.startswith("libvpx"):
            s.options = {"deadline": "realtime", "cpu-used": "8"}
        else:
            s.codec_context.max_b_frames = bframes
            s.codec_context.bit_rate = 2_000_000
        for arr in frames:
            for pkt in s.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")):
                out.mux(pkt)
        for pkt in s.encode(None):
            out.mux(pkt)
    return dest


def make(videos: Path, dest: Path, names: list[str] | None = None) -> dict[str, Path]:
    """The VARIANTS (or those named) under `dest`, reusing files already there."""
    made = {}
    for name in names or list(VARIANTS):
        src, codec, suffix, gop, bframes, size, loops = VARIANTS[name]
        path = dest / f"{name}{suffix}"
        if not path.is_file():
            frames = frames_of(videos / src, size)
            encode(frames * loops, path, codec, gop, bframes)
        made[name] = path
    return made
