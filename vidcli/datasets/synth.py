"""Built-in synthetic data: moving-shape videos (class = motion) and 3D-shape volumes (class = shape).

They exist so the quickstart can train and evaluate end to end with no download. Every sample is
seeded from (seed, split, class, index), so the same arguments always give byte-identical files and
a class never changes when more classes or clips are asked for. Everything a sample looks like in
its first frame (shape, colour, position, size, angle, background) is drawn before, and apart from,
its motion: the first frame alone cannot tell the class, only the motion over time can.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import vidcli.video  # noqa: F401  (quiets FFmpeg before cv2 loads)

# isort: split
import cv2
import numpy as np

from vidcli import fsio
from vidcli.console import log, progress
from vidcli.datasets.layout import SPLITS, is_video
from vidcli.errors import VidcliError, fail
from vidcli.video.decode import iter_frames

VERSION = 1
MANIFEST = "synth.json"
FPS = 25.0
MOTIONS = ("left", "right", "up", "down", "grow", "shrink", "clockwise", "counterclockwise")
SHAPES = ("triangle", "kite", "arrow", "ell", "tee", "half-disc")
VOLUME_SHAPES = ("sphere", "cube", "cylinder", "torus", "cone", "cross")
DEFAULT_COUNTS = {"train": 24, "val": 6, "test": 8}
_SUBPIXEL = 4  # cv2 fixed-point bits: positions move smoothly instead of snapping to whole pixels


# ---------------------------------------------------------------------------------------------
# Seeding and validation


def _seed_sequence(seed: int, split: str, class_index: int, index: int) -> np.random.SeedSequence:
    return np.random.SeedSequence([seed % 2**64, SPLITS.index(split), class_index, index])


def _streams(seed: np.random.SeedSequence | int, n: int) -> list[np.random.Generator]:
    """Independent generators derived from `seed` without mutating it (unlike `SeedSequence.spawn`)."""
    entropy = seed.entropy if isinstance(seed, np.random.SeedSequence) else seed % 2**64
    key = tuple(seed.spawn_key) if isinstance(seed, np.random.SeedSequence) else ()
    return [np.random.default_rng(np.random.SeedSequence(entropy, spawn_key=key + (k,))) for k in range(n)]


def _check_counts(counts: dict[str, int] | None) -> dict[str, int]:
    counts = dict(DEFAULT_COUNTS if counts is None else counts)
    unknown = sorted(set(counts) - set(SPLITS))
    if unknown:
        raise VidcliError(f"synthetic data: unknown split(s) {unknown}; use {list(SPLITS)}")
    out = {s: int(counts.get(s, 0)) for s in SPLITS}
    if any(n < 0 for n in out.values()) or out["train"] < 1:
        raise VidcliError(f"synthetic data: counts must be >= 0 with at least 1 train clip per class (got {out})")
    return out


def _check_range(name: str, value: int, lo: int, hi: int) -> None:
    if not lo <= value <= hi:
        raise VidcliError(f"synthetic data: {name} must be between {lo} and {hi} (got {value})")


# ---------------------------------------------------------------------------------------------
# Videos


def _outline(points: list[tuple[float, float]]) -> np.ndarray:
    pts = np.asarray(points, dtype=np.float64)
    pts -= pts.mean(axis=0)
    return pts / np.linalg.norm(pts, axis=1).max()


_HALF = np.linspace(-np.pi / 2, np.pi / 2, 13)
# No outline maps onto itself under any rotation, so a turn is always visible and never ambiguous.
_OUTLINES = {
    "triangle": _outline([(1, 0), (-0.7, 0.65), (-0.7, -0.65)]),
    "kite": _outline([(1, 0), (-0.1, 0.6), (-0.7, 0), (-0.1, -0.6)]),
    "arrow": _outline([(1, 0), (0.2, 0.6), (0.2, 0.25), (-0.9, 0.25), (-0.9, -0.25), (0.2, -0.25), (0.2, -0.6)]),
    "ell": _outline([(-0.7, -0.8), (-0.2, -0.8), (-0.2, 0.3), (0.8, 0.3), (0.8, 0.8), (-0.7, 0.8)]),
    "tee": _outline([(-0.8, -0.8), (0.8, -0.8), (0.8, -0.35), (0.22, -0.35), (0.22, 0.8), (-0.22, 0.8),
                     (-0.22, -0.35), (-0.8, -0.35)]),
    "half-disc": _outline(list(zip(np.cos(_HALF), np.sin(_HALF), strict=True))),
}


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A smooth colour field plus fine grain: texture that a detector cannot simply threshold away."""
    level = rng.uniform(50, 120)
    coarse = cv2.resize(rng.uniform(-35, 35, (5, 5, 3)).astype(np.float32), (size, size), interpolation=cv2.INTER_CUBIC)
    fine_n = max(size // 4, 2)
    fine = cv2.resize(rng.uniform(-20, 20, (fine_n, fine_n, 1)).astype(np.float32), (size, size))
    return np.clip(level + coarse + fine[..., None], 0, 255).astype(np.float32)


def _colour(rng: np.random.Generator) -> np.ndarray:
    """A saturated, bright RGB colour: it stands out from the greyish background in hue or brightness."""
    hsv = np.array([[[rng.uniform(0, 180), rng.uniform(140, 255), rng.uniform(190, 255)]]], dtype=np.float32)
    return cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)[0, 0].astype(np.float64)


def _draw(canvas: np.ndarray, outline: np.ndarray, colour: np.ndarray, x: float, y: float, r: float,
          angle: float) -> None:
    c, si = math.cos(angle), math.sin(angle)
    pts = outline @ np.array([[c, si], [-si, c]]) * r + (x, y)
    cv2.fillPoly(canvas, [np.round(pts * (1 << _SUBPIXEL)).astype(np.int32)], colour.tolist(), cv2.LINE_AA,
                 _SUBPIXEL)


def render_clip(motion: str, seed: np.random.SeedSequence | int, frames: int = 16, size: int = 64) -> np.ndarray:
    """One clip as uint8 RGB (frames, size, size, 3).

    Appearance and frame noise come from their own streams, drawn identically for every motion, so
    for a given seed all motions share frame 0 exactly; only the motion stream decides what follows.
    """
    if motion not in MOTIONS:
        raise VidcliError(f"synthetic data: unknown motion '{motion}' (choose from {', '.join(MOTIONS)})")
    look_rng, move_rng, noise_rng = _streams(seed, 3)
    shape = SHAPES[int(look_rng.integers(len(SHAPES)))]
    colour = _colour(look_rng)
    x0, y0 = look_rng.uniform(0.25 * size, 0.75 * size, 2)
    r0 = size * math.exp(look_rng.uniform(math.log(0.16), math.log(0.26)))
    a0 = look_rng.uniform(0, 2 * math.pi)
    background = _background(look_rng, size)
    noise_sigma = look_rng.uniform(5, 10)

    speed = size * move_rng.uniform(0.035, 0.06)
    spin = math.radians(move_rng.uniform(8, 14))  # < 30 degrees per sampled step at frame_step 2
    zoom = math.log(move_rng.uniform(1.8, 2.5)) / max(frames - 1, 1)
    dx, dy = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}.get(motion, (0, 0))
    dr = {"grow": zoom, "shrink": -zoom}.get(motion, 0.0)
    da = {"clockwise": spin, "counterclockwise": -spin}.get(motion, 0.0)

    outline = _OUTLINES[shape]
    canvas = np.repeat(np.round(background).astype(np.uint8)[None], frames, axis=0)
    for t in range(frames):
        x, y = (x0 + dx * speed * t) % size, (y0 + dy * speed * t) % size
        r, a = max(r0 * math.exp(dr * t), 1.5), a0 + da * t
        # Translation wraps around (a torus), so position stays uniform over time for every class.
        for ox in (-size, 0, size) if dx else (0,):
            for oy in (-size, 0, size) if dy else (0,):
                _draw(canvas[t], outline, colour, x + ox, y + oy, r, a)
    # Grey noise: MJPG subsamples chroma, so colour noise would mostly vanish in the file anyway.
    noisy = noise_rng.standard_normal(canvas.shape[:3] + (1,), dtype=np.float32)
    noisy *= noise_sigma
    noisy = noisy + canvas
    return np.rint(np.clip(noisy, 0, 255, out=noisy)).astype(np.uint8)


def _write_avi(path: Path, frames_rgb: np.ndarray) -> None:
    """MJPG in AVI: OpenCV's own encoder, deterministic and decodable everywhere OpenCV is."""
    h, w = frames_rgb.shape[1:3]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), FPS, (w, h))
    if not writer.isOpened():
        raise fail(f"cannot write {path}: this OpenCV build has no MJPG/AVI writer")
    try:
        for frame in frames_rgb:
            writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    finally:
        writer.release()
    if not path.is_file() or path.stat().st_size == 0:
        raise fail(f"cannot write {path}: OpenCV wrote no data")


def _video_jobs(classes: list[str], counts: dict[str, int]) -> Iterator[tuple[str, int, str, int]]:
    for split in SPLITS:
        for c, motion in enumerate(classes):
            for i in range(counts[split]):
                yield split, c, motion, i


def write_synth_videos(
    root: Path,
    *,
    classes: int = 8,
    counts: dict[str, int] | None = None,
    frames: int = 16,
    size: int = 64,
    seed: int = 0,
    force: bool = False,
    workers: int | None = None,
) -> Path:
    """Write `root/<split>/<motion>/<motion>_<nnnn>.avi` for the first `classes` motions; return `root`.

    Idempotent: an existing `root` made with the same settings is kept as is. The whole tree is built
    beside `root` and renamed into place, so an interrupted run leaves no `root` behind.
    """
    root = Path(os.path.abspath(root))  # "." or "x/.." have no usable name to build beside
    _check_range("classes", classes, 1, len(MOTIONS))
    _check_range("frames", frames, 2, 10_000)
    _check_range("size", size, 16, 4096)
    counts = _check_counts(counts)
    names = list(MOTIONS[:classes])
    manifest = {
        "kind": "videos", "version": VERSION, "classes": names, "counts": counts, "frames": frames,
        "size": size, "seed": seed, "fps": FPS, "codec": "MJPG", "clips": classes * sum(counts.values()),
    }
    if _existing_matches(root, manifest, force):
        return root

    def build(tmp: Path) -> None:
        jobs = list(_video_jobs(names, counts))
        for split in SPLITS:
            for motion in names if counts[split] else ():
                (tmp / split / motion).mkdir(parents=True)

        def one(job: tuple[str, int, str, int]) -> None:
            split, c, motion, i = job
            clip = render_clip(motion, _seed_sequence(seed, split, c, i), frames, size)
            _write_avi(tmp / split / motion / f"{motion}_{i:04d}.avi", clip)

        _parallel(one, jobs, workers, f"synthetic clips -> {root}")
        _check_decodes(tmp / "train" / names[0] / f"{names[0]}_0000.avi", frames, size)
        fsio.write_json(tmp / MANIFEST, manifest)

    _build_dir(root, build, force)
    log(f"wrote {manifest['clips']} synthetic clips ({', '.join(names)}) to {root}")
    return root


def _parallel(fn: Callable, jobs: list, workers: int | None, description: str) -> None:
    workers = max(1, workers or os.cpu_count() or 1)
    with progress(len(jobs), description) as advance:
        if workers == 1:
            for job in jobs:
                fn(job)
                advance(1)
            return
        pool = ThreadPoolExecutor(workers)
        try:
            for fut in as_completed([pool.submit(fn, job) for job in jobs]):
                fut.result()
                advance(1)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


def _check_decodes(path: Path, frames: int, size: int) -> None:
    """One clip read back through the project's decoder: catches an OpenCV build that cannot."""
    got = sum(1 for f in iter_frames(path) if f.shape == (size, size, 3))
    if got != frames:
        raise fail(f"{path}: wrote {frames} frames of {size}x{size} but {got} decode back; OpenCV's MJPG is broken")


# ---------------------------------------------------------------------------------------------
# Atomic, idempotent placement


def _read_manifest(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _existing_matches(root: Path, manifest: dict, force: bool) -> bool:
    """True if `root` already holds this exact dataset; raise if it holds something else (no force)."""
    if not root.exists():
        return False
    if not root.is_dir():
        raise VidcliError(f"{root}: exists and is not a folder")
    if not any(root.iterdir()):
        return False
    old = _read_manifest(root / MANIFEST)
    if old == json.loads(json.dumps(manifest)):
        log(f"synthetic data already in {root} (same settings); nothing to do")
        return True
    if force and (old is not None or _only_videos(root)):
        return False
    if force:
        raise VidcliError(f"{root}: holds files that are not a video dataset; not deleting it, even with --force")
    why = f"was made with other settings ({differences(old, manifest)})" if old is not None \
        else f"is not a synthetic dataset (no {MANIFEST})"
    raise VidcliError(f"{root}: already exists and {why}; pass --force to replace it or choose another --out")


def differences(there: dict, asked: dict) -> str:
    """'key: there X, asked Y' for every setting that differs between two manifests."""
    keys = [k for k in asked if k not in ("clips", "version") and there.get(k) != json.loads(json.dumps(asked[k]))]
    shown = [f"{k}: {_short(there.get(k))} there, {_short(asked[k])} asked" for k in keys]
    return "; ".join(shown) or "another vidcli version"


def _short(value) -> str:
    if isinstance(value, list) and len(value) > 3 and all(isinstance(v, str) for v in value):
        return f"{len(value)} ({', '.join(value[:2])}, ...)"
    return json.dumps(value)


def _only_videos(root: Path) -> bool:
    """True if `root` looks like ROOT/<split>/<class>/<clip>: safe for --force to delete, unlike a home folder."""
    for split in root.iterdir():
        if split.name not in SPLITS or not split.is_dir():
            return False
        for folder in split.iterdir():
            if not folder.is_dir() or not all(f.is_file() and is_video(f) for f in folder.iterdir()):
                return False
    return True


def _build_dir(root: Path, build: Callable[[Path], None], force: bool) -> None:
    try:
        root.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}{fsio.PARTIAL_MARK}", dir=root.parent))
    except OSError as exc:
        raise fail(f"cannot write {root}: {exc.strerror or exc}") from exc
    try:
        build(tmp)
        _swap_in(tmp, root, force)
    except OSError as exc:
        raise fail(f"cannot write {root}: {exc.strerror or exc}") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _swap_in(tmp: Path, root: Path, force: bool) -> None:
    """Rename `tmp` onto `root`; with `force` the old tree is moved aside first and deleted after."""
    old = None
    if root.exists() and any(root.iterdir()):
        if not force:  # appeared while we worked: fine if it is the same dataset
            if _read_manifest(root / MANIFEST) == _read_manifest(tmp / MANIFEST):
                return
            raise VidcliError(f"{root}: appeared while generating, with other content; pass --force to replace it")
        old = Path(tempfile.mkdtemp(prefix=f".{root.name}.old-", dir=root.parent))
        os.replace(root, old / root.name)
    try:
        os.replace(tmp, root)
    except OSError as exc:
        if old is not None:
            os.replace(old / root.name, root)
        raise fail(f"cannot write {root}: {exc.strerror or exc}") from exc
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# Volumes


def _axis_angle(axis: np.ndarray, angle: float) -> np.ndarray:
    k = axis / np.linalg.norm(axis)
    cross = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + math.sin(angle) * cross + (1 - math.cos(angle)) * cross @ cross


def _pose(rng: np.random.Generator) -> np.ndarray:
    """Any spin about the shape's own axis, then a tilt of up to 30 degrees about a random axis.

    Fully random 3D rotations are more than a small model can learn from a few dozen volumes per
    class (a tiny 3D CNN stayed near chance); a bounded tilt keeps the task about the shape.
    """
    spin = _axis_angle(np.array([0.0, 0.0, 1.0]), rng.uniform(0, 2 * math.pi))
    return _axis_angle(rng.standard_normal(3), rng.uniform(0, math.radians(30))) @ spin


def _distance(shape: str, p: np.ndarray) -> np.ndarray:
    """Approximate signed distance (negative inside) in the shape's own unit frame; volumes roughly equal.

    The shapes differ in what survives blur at 28 voxels: corners, elongation, a hole, a taper, arms.
    """
    x, y, z = p[..., 0], p[..., 1], p[..., 2]
    radial = np.sqrt(x * x + y * y)
    a = np.abs(p)
    if shape == "sphere":
        return np.sqrt(x * x + y * y + z * z) - 0.78
    if shape == "cube":
        return a.max(axis=-1) - 0.62
    if shape == "cylinder":
        return np.maximum(radial - 0.5, a[..., 2] - 1.0)
    if shape == "torus":
        return np.sqrt((radial - 0.66) ** 2 + z * z) - 0.34
    if shape == "cone":
        return np.maximum((radial - (0.9 - z) * 0.55) * 0.9, a[..., 2] - 0.9)
    if shape == "cross":
        bars = [np.maximum(np.maximum(a[..., i], a[..., j]) - 0.3, a[..., k] - 0.95)
                for i, j, k in ((0, 1, 2), (1, 2, 0), (2, 0, 1))]
        return np.minimum(np.minimum(bars[0], bars[1]), bars[2])
    raise VidcliError(f"synthetic data: unknown volume shape '{shape}'")


def _blur3d(v: np.ndarray) -> np.ndarray:
    for axis in range(3):
        pad = [(0, 0)] * 3
        pad[axis] = (1, 1)
        padded, n = np.pad(v, pad, mode="edge"), v.shape[axis]
        v = sum(w * np.take(padded, range(k, k + n), axis) for k, w in enumerate((0.25, 0.5, 0.25)))
    return v


def render_volume(shape: str, seed: np.random.SeedSequence | int, size: int = 28) -> np.ndarray:
    """One uint8 volume (size, size, size): `shape` at a random pose, scale and place, blurred, noisy."""
    rng = _streams(seed, 1)[0]
    axis = (np.arange(size, dtype=np.float64) + 0.5) / size * 2 - 1
    grid = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), axis=-1)
    scale = rng.uniform(0.55, 0.8)
    centre = rng.uniform(-0.15, 0.15, 3)
    local = (grid - centre) @ _pose(rng) / scale
    voxel = 2.0 / size
    occupancy = np.clip(0.5 - _distance(shape, local) * scale / voxel, 0.0, 1.0)
    lo, hi = rng.uniform(10, 60), rng.uniform(150, 240)
    vol = _blur3d(lo + (hi - lo) * occupancy) + rng.standard_normal(occupancy.shape) * rng.uniform(6, 16)
    return np.clip(np.round(vol), 0, 255).astype(np.uint8)


def write_synth_volumes(
    root: Path,
    *,
    classes: int = 4,
    counts: dict[str, int] | None = None,
    size: int = 28,
    seed: int = 0,
    force: bool = False,
) -> Path:
    """Write `root/synth_volumes_<size>.npz` (MedMNIST 3D layout) and its `.labels.json`; return the npz.

    The sidecar also carries a `synth` entry with every setting, which is what makes a rerun a no-op.
    """
    root = Path(os.path.abspath(root))
    _check_range("classes", classes, 1, len(VOLUME_SHAPES))
    _check_range("size", size, 8, 128)
    counts = _check_counts(counts)
    names = list(VOLUME_SHAPES[:classes])
    npz, sidecar = root / f"synth_volumes_{size}.npz", root / f"synth_volumes_{size}.labels.json"
    meta = {
        "name": "synth_volumes", "size": size, "labels": names, "source": "vidcli data synth --volumes",
        "seed": seed, "synth": {"kind": "volumes", "version": VERSION, "counts": counts},
    }
    if root.exists() and not root.is_dir():
        raise VidcliError(f"{root}: exists and is not a folder")
    if npz.exists() or sidecar.exists():
        if npz.is_file() and _read_manifest(sidecar) == json.loads(json.dumps(meta)):
            log(f"synthetic volumes already in {npz} (same settings); nothing to do")
            return npz
        if not force:
            old = _read_manifest(sidecar)
            why = f"with other settings ({differences(old, meta)})" if isinstance(old, dict) else "incomplete"
            raise VidcliError(f"{npz}: already exists {why}; pass --force to replace it")

    arrays: dict[str, np.ndarray] = {}
    total = classes * sum(counts.values())
    with progress(total, f"synthetic volumes -> {npz}") as advance:
        for split in SPLITS:
            images, labels = [], []
            for c in range(classes):
                for i in range(counts[split]):
                    images.append(render_volume(names[c], _seed_sequence(seed, split, c, i), size))
                    labels.append(c)
                    advance(1)
            # Shuffled like MedMNIST's files, so a loader that reads in order does not see one class at a time.
            order = np.random.default_rng([seed % 2**64, SPLITS.index(split), 99]).permutation(len(labels))
            stacked = np.stack(images) if images else np.empty((0, size, size, size), np.uint8)
            arrays[f"{split}_images"] = stacked[order]
            arrays[f"{split}_labels"] = np.asarray(labels, dtype=np.uint8).reshape(-1, 1)[order]
    # The sidecar lands last: a matching sidecar means the npz beside it is complete.
    with fsio.atomic_path(sidecar) as tmp_json, fsio.atomic_path(npz, suffix=".npz") as tmp_npz:
        np.savez_compressed(tmp_npz, **arrays)
        tmp_json.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        with contextlib.suppress(OSError):
            sidecar.unlink()
    log(f"wrote {total} synthetic volumes ({', '.join(names)}) to {npz}")
    return npz
