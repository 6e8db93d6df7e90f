"""Framework-free data sources: index -> (uint8 sample, label), for any on-disk layout.

The Keras and torch pipelines wrap a `Source`; decoding happens here, in numpy and OpenCV, so the
same sampling serves every backend and the ONNX predict path. `load` is thread-safe.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vidcli.errors import VidcliError


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
        if self.kind == "videos":
            from vidcli.video.decode import read_clip

            return read_clip(self.items[i], self.frames, self.frame_step, self.size, start=start, rng=rng)
        if self.kind == "frames":
            from vidcli.datasets.frames import load_frame_clip

            n = int(self.extra["num_frames"][i])
            return load_frame_clip(self.items[i], n, self.frames, self.frame_step, self.size, start, rng)
        return self.items[i]

    def record_failure(self, i: int) -> bool:
        """Count a sample that failed to load; True the first time it fails."""
        with self._lock:
            new = i not in self.failed
            self.failed.add(i)
            return new


def _class_subset(classes: list[str], wanted: list[str] | None) -> list[str]:
    if not wanted:
        return classes
    missing = [c for c in wanted if c not in classes]
    if missing:
        raise VidcliError(f"classes not in the dataset: {', '.join(missing)}")
    return list(wanted)


def open_source(data, split: str, classes: list[str] | None = None) -> Source:
    """The `split` of the dataset a recipe's `data` section describes."""
    root = Path(data.root)
    if data.format == "videos":
        from vidcli.datasets.layout import scan_split

        clips = scan_split(root, split, classes)
        h, w = data.size
        return Source("videos", clips.paths, clips.labels, clips.classes, (data.frames, h, w, 3),
                      data.frames, data.frame_step, (h, w))
    if data.format == "frames":
        from vidcli.datasets.frames import read_frame_list

        list_file = root / f"{split}_list.txt"
        if not list_file.is_file():
            raise VidcliError(f"{list_file}: frame list not found (make it with `vidcli data kinetics-frames`)")
        classes_file = root / "classes.txt"
        clips = read_frame_list(list_file, root, classes_file if classes_file.is_file() else None)
        h, w = data.size
        return Source("frames", clips.paths, clips.labels, clips.classes, (data.frames, h, w, 3),
                      data.frames, data.frame_step, (h, w), extra={"num_frames": clips.extra["num_frames"]})
    if data.format == "volumes":
        from vidcli.datasets.medmnist import load_volumes

        if not root.is_file():
            raise VidcliError(f"{root}: volumes file (.npz) not found")
        vols, labels, names = load_volumes(root, split)
        u8 = np.clip(np.rint(vols * 255.0), 0, 255).astype(np.uint8) if vols.dtype != np.uint8 else vols
        return Source("volumes", list(u8), labels.astype(np.int64), names, tuple(u8.shape[1:]), extra={"file": root.name})
    raise VidcliError(f"data.format: unknown format {data.format!r}")
