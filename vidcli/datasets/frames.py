"""The `frames` layout: one folder of `img_00001.jpg, img_00002.jpg, ...` per video plus list files.

This is the layout TSM (and TSN before it) trains from: decoding a JPEG is far cheaper than seeking
in a compressed video, and the list file `<folder> <num_frames> <label>` tells the sampler the true
length without opening anything. Names are 1-based because the reference reads them that way;
everything this module hands back is 0-based.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import vidcli.video  # noqa: F401  (quiets FFmpeg before cv2 loads)

# isort: split
import cv2
import numpy as np

from vidcli import fsio
from vidcli.datasets.layout import ClipList
from vidcli.errors import VidcliError
from vidcli.video.decode import choose_starts, clip_span, iter_frames, resize_with_pad

FRAME_TEMPLATE = "img_{:05d}.jpg"
DONE_MARKER = ".done"
SAMPLING_MODES = ("train", "val", "test", "dense", "dense_test", "twice")
DENSE_WINDOW = 64


def frame_name(index: int) -> str:
    """File name of the 0-based frame `index`."""
    return FRAME_TEMPLATE.format(index + 1)


# ---------------------------------------------------------------- writing


def scaled_size(height: int, width: int, short_side: int | None, fixed_height: int | None) -> tuple[int, int]:
    """Output (height, width): short side to `short_side`, or height to `fixed_height` (the reference's
    `ffmpeg -vf scale=-1:H`); aspect ratio kept either way."""
    if fixed_height is not None:
        return fixed_height, max(1, round(width * fixed_height / height))
    if short_side is None:
        return height, width
    scale = short_side / min(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def read_done(folder: Path) -> int | None:
    """Frame count of a finished folder, or None when the folder is absent or half-written."""
    marker = folder / DONE_MARKER
    try:
        frames = int(json.loads(marker.read_text(encoding="utf-8"))["frames"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return frames if frames > 0 else None


def write_frame_folder(
    video: Path, folder: Path, *, short_side: int | None, height: int | None, quality: int
) -> tuple[int, bool]:
    """Decode `video` into `folder`; returns (frame count, whether work was done).

    The `.done` marker is written last, so a folder without it is a crash leftover and is redone
    from scratch; a folder with it is trusted and skipped. On failure the folder is removed.
    """
    done = read_done(folder)
    if done is not None:
        return done, False
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)]
    n = 0
    try:
        for rgb in iter_frames(video):
            h, w = rgb.shape[:2]
            nh, nw = scaled_size(h, w, short_side, height)
            if (nh, nw) != (h, w):
                interp = cv2.INTER_AREA if nh < h else cv2.INTER_LINEAR
                rgb = cv2.resize(rgb, (nw, nh), interpolation=interp)
            ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params)
            if not ok:
                raise VidcliError(f"{video}: frame {n + 1} could not be encoded as JPEG")
            fsio.write_bytes(folder / frame_name(n), buf.tobytes())
            n += 1
        fsio.write_json(folder / DONE_MARKER, {"frames": n, "source": video.name})
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return n, True


# ---------------------------------------------------------------- reading


def _parse_lines(list_file: Path) -> Iterator[tuple[int, str, int, int]]:
    try:
        text = list_file.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise VidcliError(f"{list_file}: list file not found") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise VidcliError(f"{list_file}: not readable ({exc})") from exc
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.strip().rsplit(maxsplit=2)
        where = f"{list_file}:{lineno}"
        if len(parts) != 3:
            raise VidcliError(f"{where}: expected '<folder> <num_frames> <label>', got {line.strip()!r}")
        try:
            count, label = int(parts[1]), int(parts[2])
        except ValueError:
            raise VidcliError(f"{where}: frame count and label must be integers, got {line.strip()!r}") from None
        if count < 1 or label < 0:
            raise VidcliError(f"{where}: frame count must be >= 1 and label >= 0, got {line.strip()!r}")
        yield lineno, parts[0], count, label


def read_classes(path: Path) -> list[str]:
    try:
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except FileNotFoundError as exc:
        raise VidcliError(f"{path}: classes file not found") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise VidcliError(f"{path}: not readable ({exc})") from exc
    if not names:
        raise VidcliError(f"{path}: no class names")
    return names


def read_frame_list(list_file: Path, root: Path | None = None, classes_file: Path | None = None) -> ClipList:
    """A TSM list file as a ClipList of frame folders; `extra["num_frames"]` holds the counts.

    Folders are relative to `root` (default: the list file's folder). Class names come from
    `classes_file`, else a `classes.txt` beside the list, else they are "0".."C-1".
    """
    list_file = Path(list_file)
    root = Path(root) if root is not None else list_file.parent
    rows = list(_parse_lines(list_file))
    if not rows:
        raise VidcliError(f"{list_file}: no entries")
    if classes_file is None and (list_file.parent / "classes.txt").is_file():
        classes_file = list_file.parent / "classes.txt"
    if classes_file is not None:
        classes = read_classes(Path(classes_file))
    else:
        classes = [str(i) for i in range(max(r[3] for r in rows) + 1)]
    for lineno, _, _, label in rows:
        if label >= len(classes):
            raise VidcliError(f"{list_file}:{lineno}: label {label} out of range ({len(classes)} classes)")
    split = list_file.stem[: -len("_list")] if list_file.stem.endswith("_list") else list_file.stem
    return ClipList(
        paths=[root / r[1] for r in rows],
        labels=np.asarray([r[3] for r in rows], dtype=np.int64),
        classes=classes,
        split=split,
        extra={"num_frames": np.asarray([r[2] for r in rows], dtype=np.int64)},
    )


def _dense_offsets(num_frames: int, num_segments: int, start: int) -> list[int]:
    stride = DENSE_WINDOW // num_segments
    return [(i * stride + start) % num_frames for i in range(num_segments)]


def segment_indices(
    num_frames: int, num_segments: int, mode: str, rng: np.random.Generator | None, new_length: int = 1
) -> np.ndarray:
    """0-based frame indices as TSM's TSNDataSet picks them (its 1-based offsets minus one).

    "train": a random frame inside each of `num_segments` equal segments; "val": segment centres,
    or all frame 0 when the video has too few frames; "test": segment centres always (unlike "val",
    short videos get spread indices, as in the reference); "dense": I3D-style, `num_segments` frames
    with stride 64 // num_segments from a random start (random in the reference's val too);
    "dense_test": that for 10 evenly spaced starts; "twice": centres plus segment starts.
    """
    if num_frames < 1 or num_segments < 1 or new_length < 1:
        got = f"{num_frames}, {num_segments}, {new_length}"
        raise VidcliError(f"need num_frames, num_segments, new_length >= 1 (got {got})")
    if mode not in SAMPLING_MODES:
        raise VidcliError(f"unknown sampling mode '{mode}' (choose from {', '.join(SAMPLING_MODES)})")
    rng = rng if rng is not None else np.random.default_rng()
    usable = num_frames - new_length + 1
    tick = usable / float(num_segments)
    centres = [int(tick / 2.0 + tick * x) for x in range(num_segments)]
    if mode in ("dense", "dense_test"):
        sample_pos = max(1, 1 + num_frames - DENSE_WINDOW)
        if mode == "dense":
            start = 0 if sample_pos == 1 else int(rng.integers(0, sample_pos - 1))
            offsets = _dense_offsets(num_frames, num_segments, start)
        else:
            starts = np.linspace(0, sample_pos - 1, num=10, dtype=int).tolist()
            offsets = [o for s in starts for o in _dense_offsets(num_frames, num_segments, s)]
    elif mode == "train":
        average = usable // num_segments
        if average > 0:
            offsets = (np.arange(num_segments) * average + rng.integers(0, average, size=num_segments)).tolist()
        elif num_frames > num_segments:
            offsets = np.sort(rng.integers(0, usable, size=num_segments)).tolist()
        else:
            offsets = [0] * num_segments
    elif mode == "val":
        offsets = centres if num_frames > num_segments + new_length - 1 else [0] * num_segments
    elif mode == "test":
        offsets = centres
    else:
        offsets = centres + [int(tick * x) for x in range(num_segments)]
    return np.asarray(offsets, dtype=np.int64)


def load_frames(folder: Path, indices: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    """uint8 (T, H, W, 3) RGB frames at 0-based `indices`; each distinct frame is decoded once."""
    folder = Path(folder)
    cache: dict[int, np.ndarray] = {}
    out: list[np.ndarray] = []
    for i in np.asarray(indices, dtype=np.int64).ravel().tolist():
        if i not in cache:
            path = folder / frame_name(i)
            bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if bgr is None:
                what = "missing" if not path.exists() else "not a readable JPEG"
                raise VidcliError(f"{path}: frame {what}")
            rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            cache[i] = resize_with_pad(rgb, size) if size is not None else rgb
        out.append(cache[i])
    if not out:
        raise VidcliError(f"{folder}: no frame indices to load")
    shapes = {f.shape for f in out}
    if len(shapes) > 1:
        raise VidcliError(f"{folder}: frames differ in size {sorted(shapes)}; pass a size to resize them")
    return np.stack(out)


def load_frame_clip(
    folder: Path,
    num_frames: int,
    frames: int,
    frame_step: int,
    size: tuple[int, int] | None,
    start: str | int = "center",
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """`frames` frames every `frame_step` from a frame folder, like `video.decode.read_clip` on a video.

    Positions past the end repeat the last frame, so short videos still give a full clip.
    """
    if frames < 1 or frame_step < 1 or num_frames < 1:
        raise VidcliError(f"frames, frame_step and num_frames must be >= 1 (got {frames}, {frame_step}, {num_frames})")
    s = choose_starts(num_frames, clip_span(frames, frame_step), 1, start, rng)[0]
    indices = np.minimum(s + np.arange(frames) * frame_step, num_frames - 1)
    return load_frames(folder, indices, size)
