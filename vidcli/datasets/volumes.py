"""Single 3D volumes (a `.npy` file, or one entry of an npz split) for prediction with a volume model."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vidcli.errors import VidcliError


def volume_for_model(path: Path, info) -> np.ndarray:
    """A (D, H, W) or (D, H, W, 1) volume as uint8 (D, H, W, 1); the size must match the model's.

    Volumes are not resized: interpolating a medical volume silently changes what it shows, so a
    mismatch is an error that names both shapes.
    """
    if not path.is_file():
        raise VidcliError(f"{path}: file not found")
    try:
        vol = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise VidcliError(f"{path}: not a readable .npy array") from exc
    return _fit(vol, str(path), info)


def volume_from_npz(path: Path, split: str, index: int, info) -> np.ndarray:
    """Volume `index` of `{split}_images` in a MedMNIST-layout npz, checked like a `.npy` volume."""
    import zipfile

    if not path.is_file():
        raise VidcliError(f"{path}: file not found")
    key = f"{split}_images"
    try:
        with np.load(path, allow_pickle=False) as data:
            if key not in data.files:
                raise VidcliError(f"{path}: no split {split!r} (key {key!r} missing; has {', '.join(data.files)})")
            images = data[key]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise VidcliError(f"{path}: not a readable .npz file ({exc})") from exc
    if not 0 <= index < len(images):
        raise VidcliError(f"{path}: --index {index} is out of range; {key} holds {len(images)} volumes")
    return _fit(images[index], f"{path}[{split}:{index}]", info)


def _fit(vol: np.ndarray, name: str, info) -> np.ndarray:
    if vol.ndim == 4 and vol.shape[-1] == 1:
        vol = vol[..., 0]
    want = (info.frames, *info.size)
    if vol.ndim != 3 or tuple(vol.shape) != want:
        raise VidcliError(f"{name}: volume of shape {tuple(vol.shape)}, the model expects {want} (D, H, W)")
    if vol.dtype != np.uint8:
        if not np.issubdtype(vol.dtype, np.floating) or vol.min() < 0 or vol.max() > 1:
            raise VidcliError(f"{name}: expected uint8 or float in [0, 1], got {vol.dtype}")
        vol = np.rint(vol * 255).astype(np.uint8)
    return vol[..., None]
