"""Framework-free data sources: index -> (uint8 sample, label), for any on-disk layout.

The Keras and torch pipelines wrap a `Source`; decoding happens here (vidcli.video), so the same
sampling serves every backend and the ONNX predict path. `load` is thread-safe. With `data.cache` the
decoded frames of each video are kept on disk (vidcli.video.cache) and later epochs read only the frames
a clip needs; the samples are the same with the cache as without.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vidcli.errors import VidcliError
from vidcli.modelcard import CROP_RATIO


@dataclass
class Source:
    """A split of a dataset. `kind` is videos | frames | volumes."""

    kind: str
    items: list  # paths, or an array of volumes
    labels: np.ndarray
    classes: list[str]
    sample_shape: tuple[int, ...]
    frames: int = 1
    frame_step: int = 1
    size: tuple[int, int] = (0, 0)
    extra: dict = field(default_factory=dict)
    failed: set = field(default_factory=set)
    sampling: str = "step"
    flip: bool = False
    multiscale: bool = True
    cache: object | None = None  # a vidcli.video.cache.FrameCache
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __len__(self) -> int:
        return len(self.labels)

    def name(self, i: int) -> str:
        item = self.items[i]
        return str(item) if isinstance(item, (str, Path)) else f"{self.extra.get('file', 'volume')}[{i}]"

    def load(self, i: int, training: bool = False, seed: int | None = None) -> np.ndarray:
        """Sample `i` as uint8: (T, H, W, 3) for clips, (D, H, W, 1) for volumes. Raises VidcliError."""
        rng = np.random.default_rng(seed) if training else None
        start = "random" if training else "center"
        if self.sampling != "step" and self.kind in ("videos", "frames"):
            return self._segments(i, 1, 1, rng)[0]
        if self.kind == "videos":
            from vidcli.video.decode import read_clip

            clip = read_clip(self.items[i], self.frames, self.frame_step, self.size, start=start, rng=rng,
                             cache=self.cache)
        elif self.kind == "frames":
            from vidcli.datasets.frames import load_frame_clip

            n = int(self.extra["num_frames"][i])
            clip = load_frame_clip(self.items[i], n, self.frames, self.frame_step, self.size, start, rng)
        else:
            return self.items[i]
        if rng is not None and self.flip and rng.random() < 0.5:  # data.flip: mirror half the training clips
            clip = np.ascontiguousarray(clip[:, :, ::-1])
        return clip

    def load_views(self, i: int, clips: int = 1, crops: int = 1) -> np.ndarray:
        """Test-time views of sample `i`, uint8 (clips * crops, T, H, W, 3), clip-major."""
        problem = view_problem(self.kind, self.sampling, clips, crops)
        if problem:
            raise VidcliError(problem)
        if self.sampling != "step" and self.kind != "volumes":
            return self._segments(i, clips, crops, None)
        if clips == 1:
            return self.load(i)[None]
        if self.kind == "videos":  # clips spread evenly from start to end, as `predict --clips` reads them
            from vidcli.video.decode import read_clips

            return read_clips(self.items[i], self.frames, self.frame_step, self.size, clips=clips, start="center")
        from vidcli.datasets.frames import load_frames
        from vidcli.video.decode import choose_starts, clip_span

        n = int(self.extra["num_frames"][i])
        starts = choose_starts(n, clip_span(self.frames, self.frame_step), clips, "center", None)
        idx = np.minimum(np.asarray(starts)[:, None] + np.arange(self.frames) * self.frame_step, n - 1)
        return load_frames(self.items[i], idx.ravel(), self.size).reshape(clips, self.frames, *self.size, 3)

    def _segments(self, i: int, clips: int, crops: int, rng: np.random.Generator | None) -> np.ndarray:
        n = int(self.extra["num_frames"][i]) if self.kind == "frames" else None
        return segment_views(self.items[i], self.kind, self.frames, self.size, self.sampling, clips=clips,
                             crops=crops, rng=rng, flip=self.flip, multiscale=self.multiscale, num_frames=n,
                             lengths=self.extra.setdefault("lengths", {}), cache=self.cache)

    def record_failure(self, i: int) -> bool:
        """Count a sample that failed to load; True the first time it fails."""
        with self._lock:
            new = i not in self.failed
            self.failed.add(i)
            return new


def view_problem(kind: str, sampling: str, clips: int, crops: int) -> str | None:
    """Why `clips` x `crops` test-time views cannot be taken with this data, or None when they can."""
    if clips < 1 or crops < 1:
        return f"--clips and --crops must be >= 1, got {clips} and {crops}"
    if (clips, crops) == (1, 1):
        return None
    if kind == "volumes":
        return "--clips/--crops: a volume is used whole; there is one view of it"
    if crops != 1 and sampling == "step":
        return ("--crops: data.sampling step letterboxes the whole frame, so there is nothing to crop "
                "(crops need sampling segments or dense)")
    if crops not in CROPS:
        return f"--crops must be one of {', '.join(map(str, CROPS))}, got {crops}"
    return None


def class_weights(source, mode: str) -> np.ndarray | None:
    """train.class_weights of a split (anything with `labels` and `classes`): `balanced` weighs each class by
    n / (classes * its count), 0 for an absent one; `none`: None."""
    if mode != "balanced":
        return None
    counts = np.bincount(source.labels, minlength=len(source.classes)).astype(np.float64)
    w = np.where(counts > 0, len(source.labels) / (len(source.classes) * np.maximum(counts, 1)), 0.0)
    return w.astype(np.float32)


def epoch_plan(n: int, seed: int, epoch: int) -> tuple[np.ndarray, np.ndarray]:
    """Sample order and per-sample seeds of one epoch: a function of (seed, epoch) only, so a resumed run, and
    either backend, sees exactly the data an uninterrupted one would have seen."""
    rng = np.random.default_rng([seed, epoch])
    return rng.permutation(n).astype(np.int64), rng.integers(0, 2**31 - 1, size=n, dtype=np.int64)


def open_source(data, split: str, classes: list[str] | None = None) -> Source:
    """The `split` of the dataset a recipe's `data` section describes."""
    root = Path(data.root)
    if data.format == "videos":
        from vidcli.datasets.layout import scan_split

        clips = scan_split(root, split, classes)
        h, w = data.size
        return Source("videos", clips.paths, clips.labels, clips.classes, (data.frames, h, w, 3),
                      data.frames, data.frame_step, (h, w), cache=frame_cache(data), **_sampling(data))
    if data.format == "frames":
        from vidcli.datasets.frames import read_frame_list

        list_file = root / f"{split}_list.txt"
        if not list_file.is_file():
            raise VidcliError(f"{list_file}: frame list not found (make it with `vidcli data kinetics-frames`)")
        classes_file = root / "classes.txt"
        clips = read_frame_list(list_file, root, classes_file if classes_file.is_file() else None)
        h, w = data.size
        return Source("frames", clips.paths, clips.labels, clips.classes, (data.frames, h, w, 3),
                      data.frames, data.frame_step, (h, w), extra={"num_frames": clips.extra["num_frames"]},
                      **_sampling(data))
    if data.format == "volumes":
        from vidcli.datasets.medmnist import load_volumes

        if not root.is_file():
            raise VidcliError(f"{root}: volumes file (.npz) not found")
        u8, labels, names = load_volumes(root, split, dtype="uint8")  # the pipelines scale per batch
        return Source("volumes", list(u8), labels.astype(np.int64), names, tuple(u8.shape[1:]),
                      extra={"file": root.name})
    raise VidcliError(f"data.format: unknown format {data.format!r}")


def _sampling(data) -> dict:
    return {"sampling": data.sampling or "step", "flip": data.flip, "multiscale": data.multiscale_crop}


_CACHES: dict[tuple, object] = {}


def frame_cache(data):
    """The recipe's decoded-frame cache (one per folder and limit in a process), or None when off."""
    if not getattr(data, "cache", False):
        return None
    from vidcli.video.cache import FrameCache

    cache = FrameCache(data.cache_dir, data.cache_limit_gb)
    key = (str(cache.root), cache.limit)
    if key not in _CACHES:
        _CACHES[key] = cache.check()
    return _CACHES[key]


# TSM's sampling: `segments` frames, one per equal segment (or `dense`: a fixed stride), resized to cover
# the model size times CROP_RATIO (the reference's 256 for 224) and cropped, never padded.
SCALES = (1.0, 0.875, 0.75, 0.66)
CROPS = (1, 3, 10)


def segment_positions(num_frames: int, segments: int, sampling: str, clips: int = 1,
                      rng: np.random.Generator | None = None) -> np.ndarray:
    """0-based frame indices (clips, segments). With `rng`: one random training clip as the reference
    draws it; without: `clips` evenly offset clips (one clip = the segment centres)."""
    from vidcli.datasets.frames import DENSE_WINDOW, segment_indices

    if rng is not None:
        return segment_indices(num_frames, segments, "dense" if sampling == "dense" else "train", rng)[None]
    if sampling == "dense":
        stride, room = max(1, DENSE_WINDOW // segments), max(0, num_frames - DENSE_WINDOW)
        starts = [room // 2] if clips == 1 else np.linspace(0, room, clips).astype(int).tolist()
        return np.asarray([[(s + k * stride) % num_frames for k in range(segments)] for s in starts], np.int64)
    tick = num_frames / segments
    return np.asarray([[int(tick * (c + 0.5) / clips + tick * k) for k in range(segments)] for c in range(clips)],
                      np.int64)


def _video_frames(path: Path, pick, lengths: dict | None, fit, cache=None) -> np.ndarray:
    """Frames at `pick(length)` in one pass, sized by `fit`; a length the frames do not reach is corrected
    and the positions picked again. `lengths` records the length used, by path."""
    from vidcli.video.decode import read_frames

    idx, got, n = read_frames(path, pick, fit, cache)
    if lengths is not None:
        lengths[str(path)] = n
    have = sorted(got)
    frames = [got[max((k for k in have if k <= p), default=have[0])] for p in idx.ravel().tolist()]
    return np.stack(frames).reshape(idx.shape + frames[0].shape)


def _cover(frames: np.ndarray, size: tuple[int, int], ratio: float) -> np.ndarray:
    """Resize keeping the aspect ratio so the frames cover `size` * ratio (video frames come covered
    from the decoder; frame folders are covered here, by the same rule)."""
    from vidcli.video.fit import Fit

    fit = Fit("cover", tuple(size), ratio)
    if fit.scaled(*frames.shape[1:3]) == frames.shape[1:3]:
        return frames
    return np.stack([fit.apply(fr) for fr in frames])


def _resize(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    import cv2

    if frames.shape[1:3] == tuple(size):
        return frames
    return np.stack([cv2.resize(fr, (size[1], size[0]), interpolation=cv2.INTER_LINEAR) for fr in frames])


def _grid(h: int, w: int, ch: int, cw: int, more: bool) -> list[tuple[int, int]]:
    """Crop corners on a 4x4 grid: centre and the four corners, plus eight more in between if `more`."""
    hs, ws = (h - ch) // 4, (w - cw) // 4
    cells = [(0, 0), (0, 4), (4, 0), (4, 4), (2, 2)]
    if more:
        cells += [(2, 0), (2, 4), (4, 2), (0, 2), (1, 1), (1, 3), (3, 1), (3, 3)]
    return [(r * hs, c * ws) for r, c in cells]


def train_view(frames: np.ndarray, size: tuple[int, int], rng: np.random.Generator, multiscale: bool,
               flip: bool, covered: bool = False) -> np.ndarray:
    """The reference's training augmentation: multi-scale corner crop (scale pairs at most one step apart,
    sizes within 3 px of the target snapped to it), resize to `size`, horizontal flip half the time.
    `covered`: the frames already cover `size` * CROP_RATIO."""
    if not covered:
        frames = _cover(frames, size, CROP_RATIO)
    h, w = frames.shape[1:3]
    if multiscale:
        base = min(h, w)
        sizes_h = [size[0] if abs(int(base * s) - size[0]) < 3 else int(base * s) for s in SCALES]
        sizes_w = [size[1] if abs(int(base * s) - size[1]) < 3 else int(base * s) for s in SCALES]
        pairs = [(a, b) for a in range(len(SCALES)) for b in range(len(SCALES)) if abs(a - b) <= 1]
        a, b = pairs[int(rng.integers(len(pairs)))]
        ch, cw = min(sizes_h[a], h), min(sizes_w[b], w)
        corners = _grid(h, w, ch, cw, more=True)
        y, x = corners[int(rng.integers(len(corners)))]
    else:
        ch, cw = size
        y, x = (h - ch) // 2, (w - cw) // 2
    out = _resize(frames[:, y : y + ch, x : x + cw], size)
    if flip and rng.random() < 0.5:
        out = out[:, :, ::-1]
    return np.ascontiguousarray(out)


def crop_ratio(crops: int) -> float:
    return 1.0 if crops == 3 else CROP_RATIO


def crop_views(frames: np.ndarray, size: tuple[int, int], crops: int, flip: bool, covered: bool = False) -> np.ndarray:
    """1: centre crop; 3: three crops along the long side at scale 1 (the reference's full-resolution
    sampling); 10: corners and centre plus their mirror images, which `flip=False` leaves out (5 views)."""
    if crops not in CROPS:
        raise VidcliError(f"crops must be one of {', '.join(map(str, CROPS))}, got {crops}")
    ch, cw = size
    if not covered:
        frames = _cover(frames, size, crop_ratio(crops))
    h, w = frames.shape[1:3]
    if crops == 1:
        corners = [((h - ch) // 2, (w - cw) // 2)]
    elif crops == 3:
        hs, ws = (h - ch) // 4, (w - cw) // 4
        corners = [(0, 0), (4 * hs, 4 * ws), (2 * hs, 2 * ws)]
    else:
        corners = _grid(h, w, ch, cw, more=False)
    views = [frames[:, y : y + ch, x : x + cw] for y, x in corners]
    if crops == 10 and flip:
        views += [v[:, :, ::-1] for v in views]
    return np.ascontiguousarray(np.stack(views))


def segment_views(item, kind: str, segments: int, size: tuple[int, int], sampling: str, *, clips: int = 1,
                  crops: int = 1, rng: np.random.Generator | None = None, flip: bool = False,
                  multiscale: bool = True, num_frames: int | None = None, lengths: dict | None = None,
                  cache=None) -> np.ndarray:
    """uint8 (V, segments, H, W, 3) from a video file or a frame folder: with `rng` one augmented
    training view, else `clips` x `crops` test views. Used by training, evaluation and `predict` alike.
    A video's frames come from the decoder already covering the crop area (see `_cover`)."""
    if clips < 1:
        raise VidcliError(f"clips must be >= 1, got {clips}")
    if crops not in CROPS:
        raise VidcliError(f"crops must be one of {', '.join(map(str, CROPS))}, got {crops}")

    def pick(n: int) -> np.ndarray:
        return segment_positions(n, segments, sampling, clips, rng)

    if kind == "frames":
        from vidcli.datasets.frames import load_frames

        idx = pick(int(num_frames or 0))
        raw = load_frames(Path(item), idx.ravel(), None)
        raw = raw.reshape(idx.shape + raw.shape[1:])
    else:
        from vidcli.video.fit import Fit

        ratio = CROP_RATIO if rng is not None else crop_ratio(crops)
        raw = _video_frames(Path(item), pick, lengths, Fit("cover", tuple(size), ratio), cache)
    covered = kind != "frames"
    if rng is not None:
        return train_view(raw[0], tuple(size), rng, multiscale, flip, covered)[None]
    return np.concatenate([crop_views(c, tuple(size), crops, flip, covered) for c in raw])
