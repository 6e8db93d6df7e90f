"""What data a run trained on: a fingerprint recorded in run.json and compared again when it is evaluated.

The fingerprint holds the layout, the classes, the clip count of every split and a SHA-256 of the split's file
list (relative paths and sizes; volumes: the file's bytes). It is cheap enough to take on every `train` and
`eval`, and it changes whenever a clip is added, removed, replaced by another size or renamed.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from vidcli.errors import VidcliError

SPLITS = ("train", "val", "test")


def _digest(lines: list[str]) -> str:
    return hashlib.sha256("\n".join(lines).encode("utf-8")).hexdigest()


def _split_lines(data: Any, split: str, classes: list[str] | None) -> list[str] | None:
    root = Path(data.root)
    if data.format == "videos":
        from vidcli.datasets.layout import scan_split

        if not (root / split).is_dir():
            return None
        clips = scan_split(root, split, classes)
        return [f"{p.relative_to(root).as_posix()}:{p.stat().st_size}" for p in clips.paths]
    if data.format == "frames":
        f = root / f"{split}_list.txt"
        return f.read_text(encoding="utf-8", errors="replace").splitlines() if f.is_file() else None
    return None


def fingerprint(data: Any, classes: list[str] | None = None) -> dict[str, Any]:
    """The fingerprint of the data a recipe's `data` section points at (see the module notes)."""
    root = Path(data.root)
    out: dict[str, Any] = {"root": str(root.resolve()), "format": data.format, "classes": list(classes or []),
                           "splits": {}}
    if data.format == "volumes":
        if root.is_file():
            h = hashlib.sha256()
            with root.open("rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
            out["file_sha256"] = h.hexdigest()
        return out
    for split in SPLITS:
        try:
            lines = _split_lines(data, split, classes or None)
        except VidcliError:
            continue
        if lines is not None:
            out["splits"][split] = {"clips": len(lines), "sha256": _digest(lines)}
    return out


def changes(then: dict[str, Any], now: dict[str, Any], split: str | None = None) -> list[str]:
    """What differs between two fingerprints (for `split` alone when given), in words."""
    found = []
    if then.get("format") != now.get("format"):
        found.append(f"format {then.get('format')} then, {now.get('format')} now")
    if then.get("file_sha256") != now.get("file_sha256"):
        found.append("the volumes file's contents changed")
    for name in [split] if split else sorted(set(then.get("splits", {})) | set(now.get("splits", {}))):
        a, b = then.get("splits", {}).get(name), now.get("splits", {}).get(name)
        if a == b:
            continue
        if a is None or b is None:
            found.append(f"{name}: {'absent' if a is None else str(a['clips']) + ' clips'} then, "
                         f"{'absent' if b is None else str(b['clips']) + ' clips'} now")
        elif a["clips"] != b["clips"]:
            found.append(f"{name}: {a['clips']} clips then, {b['clips']} now")
        else:
            found.append(f"{name}: same count, other files")
    return found
