"""Class names for models exported without data: the label list of a known release, else numbered names.

MoViNet releases are trained on Kinetics-600 and the TSM `kinetics` releases on Kinetics-400; their class names
are fetched once from the lists the references publish (cached beside the weights) and checked to hold as many
names as the model has outputs. `--labels FILE` (one name per line) overrides them.
"""

from __future__ import annotations

import os
from pathlib import Path

from vidcli.console import warn
from vidcli.errors import VidcliError

LISTS = {
    "kinetics400": "https://raw.githubusercontent.com/deepmind/kinetics-i3d/master/data/label_map.txt",
    "kinetics600": "https://raw.githubusercontent.com/tensorflow/models/master/official/projects/movinet/files/"
                   "kinetics_600_labels.txt",
}


def cache_dir() -> Path:
    from vidcli.video.cache import default_root

    return default_root() / "labels"


def read_file(path: Path, count: int | None = None) -> list[str]:
    """One class name per line (blank lines skipped); `count`: how many the model needs."""
    try:
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise VidcliError(f"{path}: cannot read class names ({exc})") from None
    if count is not None and len(names) != count:
        raise VidcliError(f"{path}: {len(names)} class names, the model has {count} outputs")
    if len(set(names)) != len(names):
        raise VidcliError(f"{path}: class names repeat")
    return names


def release_list(name: str, count: int) -> list[str] | None:
    """The class names of list `name` (see LISTS), downloaded once; None (with a warning) when unavailable."""
    from vidcli.download import download

    url = os.environ.get(f"VIDCLI_LABELS_{name.upper()}") or LISTS[name]
    dest = cache_dir() / f"{name}.txt"
    try:
        return read_file(download(url, dest, description=f"class names of {name}", timeout=15, retries=1), count)
    except VidcliError as exc:
        warn(f"class names of {name} unavailable ({exc}); the labels are numbered instead")
        return None


def numbered(count: int) -> list[str]:
    return [f"class_{i}" for i in range(count)]
