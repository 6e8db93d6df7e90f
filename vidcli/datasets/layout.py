"""The on-disk video layout every fetcher writes: ROOT/{train,val,test}/<class>/<clip>.

Class indices are the sorted class-folder names of the training split, so every split, run and
exported model agrees on what index 3 means.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vidcli.errors import VidcliError
from vidcli.video.decode import VIDEO_EXTENSIONS

SPLITS = ("train", "val", "test")


@dataclass
class ClipList:
    paths: list[Path]
    labels: np.ndarray
    classes: list[str]
    split: str = ""
    extra: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.paths)


def _class_dirs(split_dir: Path) -> list[str]:
    return sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def class_names(root: str | Path) -> list[str]:
    root = Path(root)
    if not root.is_dir():
        raise VidcliError(f"data folder {root} not found")
    for split in SPLITS:
        if (root / split).is_dir():
            names = _class_dirs(root / split)
            if names:
                return names
    raise VidcliError(f"{root}: no class folders found (expected {root}/train/<class>/<clip>)")


def is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_EXTENSIONS and not path.name.startswith(".")


def scan_split(root: str | Path, split: str, classes: list[str] | None = None) -> ClipList:
    """All clips of one split, labelled by folder. Classes unknown to `classes` are an error."""
    root = Path(root)
    classes = classes or class_names(root)
    split_dir = root / split
    if not split_dir.is_dir():
        raise VidcliError(f"{split_dir}: split folder not found")
    index = {c: i for i, c in enumerate(classes)}
    paths: list[Path] = []
    labels: list[int] = []
    for name in _class_dirs(split_dir):
        if name not in index:
            raise VidcliError(f"{split_dir / name}: class '{name}' is not among the training classes")
        for clip in sorted((split_dir / name).iterdir()):
            if clip.is_file() and is_video(clip):
                paths.append(clip)
                labels.append(index[name])
    if not paths:
        raise VidcliError(f"{split_dir}: no video clips found")
    return ClipList(paths, np.asarray(labels, dtype=np.int64), list(classes), split)
