"""MedMNIST v3 3D sets as the project's volumes data set format.

The format is the MedMNIST npz itself (`{train,val,test}_images` uint8 (N, D, H, W) and
`{split}_labels` (N, 1)) under `<name>_<size>.npz`, plus a sidecar `<name>_<size>.labels.json` with
the class names, so a trained model can name its predictions without the `medmnist` package.
URLs, MD5s and label names are those of MedMNIST's `medmnist/info.py` (v3.0.2, Zenodo record 10519652).
"""

from __future__ import annotations

import contextlib
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vidcli import console, fsio
from vidcli.download import digest, download
from vidcli.errors import VidcliError, fail

SPLITS = ("train", "val", "test")
SIZES = (28, 64)
INCOMING = ".incoming"
_ZENODO = "https://zenodo.org/records/10519652/files/{name}{suffix}.npz?download=1"


@dataclass(frozen=True)
class MedMnistSet:
    md5: dict[int, str]
    labels: tuple[str, ...]

    def url(self, name: str, size: int) -> str:
        return _ZENODO.format(name=name, suffix="" if size == 28 else f"_{size}")


DATASETS: dict[str, MedMnistSet] = {
    "organmnist3d": MedMnistSet(
        {28: "a0c5a1ff56af4f155c46d46fbb45a2fe", 64: "58a2205adf14a9d0a189cb06dc78bf10"},
        (
            "liver",
            "kidney-right",
            "kidney-left",
            "femur-right",
            "femur-left",
            "bladder",
            "heart",
            "lung-right",
            "lung-left",
            "spleen",
            "pancreas",
        ),
    ),
    "nodulemnist3d": MedMnistSet(
        {28: "8755a7e9e05a4d9ce80a24c3e7a256f3", 64: "c47c5b7d457bf6332200d2ea6d64ecd8"},
        ("benign", "malignant"),
    ),
    "adrenalmnist3d": MedMnistSet(
        {28: "bbd3c5a5576322bc4cdfea780653b1ce", 64: "17721accfe9fb005146a47d33bc54b2f"},
        ("normal", "hyperplasia"),
    ),
    "fracturemnist3d": MedMnistSet(
        {28: "6aa7b0143a6b42da40027a9dda61302f", 64: "f01d7e6316aedf4210da0da5b7437b42"},
        ("buckle rib fracture", "nondisplaced rib fracture", "displaced rib fracture"),
    ),
    "vesselmnist3d": MedMnistSet(
        {28: "b41fd4f7e7e2feedddb201585ecafa1b", 64: "6bb274a8846e1097066dcd64e2c4520f"},
        ("vessel", "aneurysm"),
    ),
    "synapsemnist3d": MedMnistSet(
        {28: "1235b78a3cd6280881dd7850a78eadb6", 64: "43bd14ebf3af9d3dd072446fedc14d5e"},
        ("inhibitory synapse", "excitatory synapse"),
    ),
}


def dataset_info(name: str, size: int = 28) -> MedMnistSet:
    key = name.strip().lower()
    if key not in DATASETS:
        raise VidcliError(f"unknown MedMNIST 3D data set {name!r}; known: {', '.join(DATASETS)}")
    if size not in SIZES:
        raise VidcliError(f"MedMNIST size must be one of {', '.join(map(str, SIZES))}, not {size}")
    return DATASETS[key]


def paths(name: str, size: int, out: Path) -> tuple[Path, Path]:
    """The npz and its label sidecar for one set and size."""
    stem = f"{name.strip().lower()}_{size}"
    return Path(out) / f"{stem}.npz", Path(out) / f"{stem}.labels.json"


def fetch_medmnist(
    name: str,
    size: int = 28,
    out: Path = Path("data/medmnist"),
    *,
    file: Path | None = None,
    url: str | None = None,
    verify: bool = True,
) -> Path:
    """Download (or import `file`), verify, validate and store one set; return the npz path.

    The file is checked against the official MD5 even when it comes from `file` or a mirror `url`,
    because a wrong or truncated copy only shows up later as a confusing training failure.
    """
    if file is not None and url is not None:
        raise VidcliError("--file and --url: one source or the other (a local copy, or a mirror to download from)")
    info = dataset_info(name, size)
    name = name.strip().lower()
    npz, sidecar = paths(name, size, out)
    md5 = info.md5[size] if verify else None
    source = str(file) if file is not None else (url or info.url(name, size))
    if file is not None and not Path(file).is_file():
        raise VidcliError(f"{file}: file not found")
    if npz.is_file() and md5 and digest(npz) == md5:
        console.log(f"{npz} is already there and verified")
        if sidecar.is_file():
            return npz
    else:
        _store(source, npz, md5, size, len(info.labels))
    record = {"name": name, "size": size, "labels": list(info.labels), "source": source, "md5": md5 or digest(npz)}
    fsio.write_json(sidecar, record)
    return npz


def _store(source: str, npz: Path, md5: str | None, size: int, num_classes: int) -> None:
    """Fetch into a staging folder (where an interrupted download waits to resume) and move in only a
    file whose layout is right."""
    staging = npz.parent / INCOMING / npz.name
    try:
        download(source, staging, md5=md5, description=npz.stem, overwrite=md5 is None)
        try:
            validate_npz(staging, size=size, num_classes=num_classes)
        except VidcliError:
            staging.unlink(missing_ok=True)
            raise
        try:
            os.replace(staging, npz)
        except OSError as exc:
            raise fail(f"cannot write {npz}: {exc.strerror or exc}") from exc
    finally:
        with contextlib.suppress(OSError):
            staging.parent.rmdir()


def validate_npz(path: Path, *, size: int | None = None, num_classes: int | None = None) -> dict[str, int]:
    """Check the layout without decompressing the images; return the number of samples per split."""
    counts = {}
    with _open_npz(path) as data:
        for split in SPLITS:
            images_key, labels_key = f"{split}_images", f"{split}_labels"
            for key in (images_key, labels_key):
                if key not in data.files:
                    raise VidcliError(f"{path}: key {key!r} missing (has {', '.join(data.files) or 'nothing'})")
            dtype, shape = _member_header(path, images_key)
            if dtype != np.uint8:
                raise VidcliError(f"{path}: {images_key} must be uint8, not {dtype}")
            if len(shape) != 4 or (size is not None and shape[1:] != (size, size, size)):
                want = f"(N, {size}, {size}, {size})" if size else "(N, D, H, W)"
                raise VidcliError(f"{path}: {images_key} has shape {shape}, expected {want}")
            labels = _read(data, path, labels_key)
            _check_labels(path, labels_key, labels, shape[0], num_classes)
            counts[split] = shape[0]
    return counts


def load_volumes(npz_path: Path, split: str, *, dtype: str = "float32") -> tuple[np.ndarray, np.ndarray, list[str]]:
    """One split as (N, D, H, W, 1) volumes, (N,) int64 labels and the class names.

    float32 volumes are scaled to [0, 1]; `dtype="uint8"` returns the stored bytes unscaled, a quarter of
    the memory for pipelines that normalise per batch (a 64^3 training split is ~1 GB as float32).
    """
    if split not in SPLITS:
        raise VidcliError(f"split must be one of {', '.join(SPLITS)}, not {split!r}")
    if dtype not in ("float32", "uint8"):
        raise VidcliError(f"volumes dtype must be float32 or uint8, not {dtype!r}")
    npz_path = Path(npz_path)
    with _open_npz(npz_path) as data:
        for key in (f"{split}_images", f"{split}_labels"):
            if key not in data.files:
                raise VidcliError(f"{npz_path}: key {key!r} missing")
        images = _read(data, npz_path, f"{split}_images")
        labels = _read(data, npz_path, f"{split}_labels")
        names = _label_names(npz_path, data)
    _check_labels(npz_path, f"{split}_labels", labels, len(images), len(names))
    if images.ndim not in (4, 5) or (images.ndim == 5 and images.shape[-1] != 1):
        raise VidcliError(f"{npz_path}: {split}_images has shape {images.shape}, expected (N, D, H, W)")
    if dtype == "uint8":
        if images.dtype != np.uint8:
            raise VidcliError(f"{npz_path}: {split}_images is {images.dtype}, not uint8")
        volumes = images
    else:
        volumes = _to_unit_float(images, npz_path, f"{split}_images")
    if volumes.ndim == 4:
        volumes = volumes[..., None]
    return volumes, labels.reshape(-1).astype(np.int64), names


def load_volume_file(path: Path) -> np.ndarray:
    """A single `.npy` volume (D, H, W) or (D, H, W, 1) as (D, H, W, 1) float32 in [0, 1], for predict."""
    path = Path(path)
    try:
        volume = np.load(path, allow_pickle=False)
    except FileNotFoundError as exc:
        raise VidcliError(f"{path}: file not found") from exc
    except (OSError, ValueError) as exc:
        raise VidcliError(f"{path}: not a readable .npy volume ({exc})") from exc
    if not isinstance(volume, np.ndarray):
        raise VidcliError(f"{path}: expected one array in a .npy file, not an archive")
    if volume.ndim == 3:
        volume = volume[..., None]
    if volume.ndim != 4 or volume.shape[-1] != 1:
        raise VidcliError(f"{path}: volume has shape {volume.shape}, expected (D, H, W) or (D, H, W, 1)")
    return _to_unit_float(volume, path, "volume")


def _open_npz(path: Path) -> np.lib.npyio.NpzFile:
    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError as exc:
        raise VidcliError(f"{path}: file not found") from exc
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise VidcliError(f"{path}: not a readable .npz file ({exc})") from exc


def _read(data: np.lib.npyio.NpzFile, path: Path, key: str) -> np.ndarray:
    try:
        return data[key]
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise VidcliError(f"{path}: cannot read {key!r} ({exc})") from exc


def _member_header(path: Path, key: str) -> tuple[np.dtype, tuple[int, ...]]:
    """dtype and shape of one npz member from its .npy header, without reading the data."""
    try:
        with zipfile.ZipFile(path) as archive, archive.open(f"{key}.npy") as member:
            version = np.lib.format.read_magic(member)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(member)
            else:
                shape, _, dtype = np.lib.format.read_array_header_2_0(member)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        raise VidcliError(f"{path}: cannot read {key!r} ({exc})") from exc
    return np.dtype(dtype), tuple(shape)


def _check_labels(path: Path, key: str, labels: np.ndarray, count: int, num_classes: int | None) -> None:
    if not np.issubdtype(labels.dtype, np.integer):
        raise VidcliError(f"{path}: {key} must hold integers, not {labels.dtype}")
    if labels.shape not in ((count, 1), (count,)):
        raise VidcliError(f"{path}: {key} has shape {labels.shape}, expected ({count}, 1)")
    if labels.size and (labels.min() < 0 or (num_classes is not None and labels.max() >= num_classes)):
        raise VidcliError(f"{path}: {key} has values outside 0..{(num_classes or 1) - 1}")


def _label_names(npz_path: Path, data: np.lib.npyio.NpzFile) -> list[str]:
    sidecar = npz_path.with_name(npz_path.stem + ".labels.json")
    if sidecar.is_file():
        record = fsio.read_json(sidecar)
        names = record.get("labels") if isinstance(record, dict) else None
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise VidcliError(f"{sidecar}: key 'labels' must be a list of class names")
        return names
    top = -1
    for split in SPLITS:
        if f"{split}_labels" in data.files:
            labels = _read(data, npz_path, f"{split}_labels")
            if labels.size and np.issubdtype(labels.dtype, np.integer):
                top = max(top, int(labels.max()))
    console.warn(f"{sidecar} not found; naming the {top + 1} classes by their index")
    return [str(i) for i in range(top + 1)]


def _to_unit_float(array: np.ndarray, path: Path, key: str) -> np.ndarray:
    if array.dtype == np.uint8:
        out = array.astype(np.float32)
        out *= np.float32(1 / 255)
        return out
    if np.issubdtype(array.dtype, np.floating):
        out = array.astype(np.float32, copy=False)
        if out.size and (out.min() < 0 or out.max() > 1):
            console.warn(f"{path}: {key} values lie outside [0, 1]; using them as they are")
        return out
    if array.dtype == np.bool_:
        return array.astype(np.float32)
    raise VidcliError(f"{path}: {key} must be uint8 or float, not {array.dtype}")
