"""The synthetic datasets: class semantics, layout, decoding, determinism, idempotence and atomicity."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from vidcli.datasets import synth
from vidcli.datasets.layout import scan_split
from vidcli.errors import VidcliError
from vidcli.video.decode import iter_frames, read_clip

SMALL = {"classes": 3, "counts": {"train": 2, "val": 1, "test": 1}, "frames": 6, "size": 32, "workers": 2}
SMALL_VOL = {"classes": 3, "counts": {"train": 3, "val": 1, "test": 2}, "size": 12}


def _hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _leftovers(parent: Path) -> list[str]:
    return [p.name for p in parent.iterdir() if p.name.startswith(".")]


@pytest.fixture
def plain(monkeypatch):
    """A black background, so a shape is simply its bright pixels (shape colours are bright)."""
    monkeypatch.setattr(synth, "_background", lambda rng, size: np.zeros((size, size, 3), np.float32))


def _masks(clip: np.ndarray) -> np.ndarray:
    return clip.max(axis=-1) > 100


def _turn(clip: np.ndarray) -> float:
    """Degrees per frame that best map each shape mask onto the next (OpenCV sign: + is anticlockwise on screen).

    Each mask turns about its own centroid and then moves onto the next one's, which works whatever the pivot.
    """
    masks = _masks(clip).astype(np.float32)
    centres = [np.argwhere(m).mean(axis=0) for m in masks]
    best = []
    for t in range(len(masks) - 1):
        (cy, cx), (ny, nx) = centres[t], centres[t + 1]
        errors = {}
        for angle in range(-30, 31, 2):
            matrix = cv2.getRotationMatrix2D((float(cx), float(cy)), angle, 1.0)
            matrix[:, 2] += (nx - cx, ny - cy)
            errors[angle] = float(np.abs(cv2.warpAffine(masks[t], matrix, masks.shape[2:0:-1]) - masks[t + 1]).sum())
        best.append(min(errors, key=errors.get))
    return float(np.median(best))


# --- what a clip shows ---------------------------------------------------------------------------

def test_first_frame_is_the_same_for_every_motion():
    for seed in range(5):
        clips = {m: synth.render_clip(m, seed, frames=8, size=48) for m in synth.MOTIONS}
        for motion, clip in clips.items():
            assert clip.shape == (8, 48, 48, 3) and clip.dtype == np.uint8
            np.testing.assert_array_equal(clip[0], clips["left"][0], err_msg=motion)
            assert motion == "left" or not np.array_equal(clip[-1], clips["left"][-1])


def test_written_first_frames_have_no_class_bias(tmp_path):
    """Per-class means of first-frame statistics differ no more than sampling noise allows."""
    n = 20
    root = synth.write_synth_videos(tmp_path / "d", classes=8, counts={"train": n}, frames=2, size=32)
    stats = []
    for c in synth.MOTIONS:
        firsts = np.stack([next(iter_frames(p)) for p in sorted((root / "train" / c).glob("*.avi"))]).astype(float)
        stats.append(np.stack([firsts.mean(axis=(1, 2, 3)), firsts.std(axis=(1, 2, 3))], axis=1))
    stats = np.stack(stats)  # (class, clip, statistic)
    class_means, within = stats.mean(axis=1), stats.std(axis=1).mean(axis=0)
    # The range of 8 sample means of n draws exceeds 5 standard errors less than 1 time in 1000.
    assert (np.ptp(class_means, axis=0) < 5 * within / np.sqrt(n)).all(), (class_means, within)


@pytest.mark.parametrize("motion,axis,sign", [("left", 1, -1), ("right", 1, 1), ("up", 0, -1), ("down", 0, 1)])
def test_translation_moves_the_right_way(plain, motion, axis, sign):
    for seed in range(6):
        masks = _masks(synth.render_clip(motion, seed, frames=16, size=64))
        centres = [np.argwhere(masks[t]).mean(axis=0) for t in range(4)]  # too early to wrap around
        steps = np.diff([c[axis] for c in centres]) * sign
        assert (steps > 1.5).all(), (motion, seed, centres)
        assert abs(centres[3][1 - axis] - centres[0][1 - axis]) < 0.5


@pytest.mark.parametrize("motion,sign", [("grow", 1), ("shrink", -1)])
def test_scale_changes_the_right_way(plain, motion, sign):
    for seed in range(6):
        area = _masks(synth.render_clip(motion, seed, frames=16, size=64)).reshape(16, -1).sum(axis=1)
        assert (np.diff(area[::3]) * sign > 0).all(), (motion, seed, area)
        assert (area[-1] / area[0]) ** sign > 2.5, (motion, seed, area)


def test_rotation_turns_the_right_way(plain):
    for seed in range(6):
        assert _turn(synth.render_clip("clockwise", seed, frames=6, size=64)) <= -8, seed
        assert _turn(synth.render_clip("counterclockwise", seed, frames=6, size=64)) >= 8, seed


def test_unknown_motion_is_a_user_error():
    with pytest.raises(VidcliError, match="unknown motion"):
        synth.render_clip("sideways", 0)


# --- the written dataset --------------------------------------------------------------------------

def test_layout_counts_and_manifest(tmp_path):
    root = synth.write_synth_videos(tmp_path / "synth", seed=3, **SMALL)
    assert root == tmp_path / "synth"
    for split, n in SMALL["counts"].items():
        clips = scan_split(root, split)
        assert clips.classes == sorted(synth.MOTIONS[:3])
        assert len(clips) == 3 * n
        assert np.bincount(clips.labels).tolist() == [n] * 3
        assert [p.name for p in clips.paths if p.parent.name == "up"] == [f"up_{i:04d}.avi" for i in range(n)]
    manifest = json.loads((root / "synth.json").read_text())
    assert manifest["kind"] == "videos" and manifest["version"] == synth.VERSION
    assert manifest["classes"] == list(synth.MOTIONS[:3]) and manifest["counts"] == SMALL["counts"]
    assert (manifest["frames"], manifest["size"], manifest["seed"], manifest["clips"]) == (6, 32, 3, 12)
    assert _leftovers(tmp_path) == []


def test_clips_decode_with_right_frames_and_content(tmp_path):
    root = synth.write_synth_videos(tmp_path / "synth", **SMALL)
    for split, c, motion, i in [("train", 0, "left", 1), ("test", 2, "up", 0)]:
        path = root / split / motion / f"{motion}_{i:04d}.avi"
        assert sum(1 for _ in iter_frames(path)) == 6
        got = read_clip(path, 6, 1, (32, 32))
        assert got.shape == (6, 32, 32, 3)
        want = synth.render_clip(motion, synth._seed_sequence(0, split, c, i), 6, 32)
        err = np.abs(got.astype(np.int16) - want).mean()
        assert err < 10, err  # MJPG is lossy, but this is the same picture
        other = synth.render_clip(motion, synth._seed_sequence(0, split, c, i + 1), 6, 32)
        assert np.abs(got.astype(np.int16) - other).mean() > 2 * err


def test_zero_count_split_is_left_out(tmp_path):
    root = synth.write_synth_videos(tmp_path / "d", classes=2, counts={"train": 1, "val": 0, "test": 0},
                                    frames=2, size=16)
    assert sorted(p.name for p in root.iterdir()) == ["synth.json", "train"]


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    a = _hashes(synth.write_synth_videos(tmp_path / "a", seed=7, **SMALL))
    b = _hashes(synth.write_synth_videos(tmp_path / "b", seed=7, **{**SMALL, "workers": 1}))
    c = _hashes(synth.write_synth_videos(tmp_path / "c", seed=8, **SMALL))
    assert a == b and len(a) == 13
    assert all(a[k] != c[k] for k in a if k.endswith(".avi"))


def test_rerun_with_same_settings_is_a_no_op(tmp_path, monkeypatch):
    root = synth.write_synth_videos(tmp_path / "d", **SMALL)
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*")}

    def boom(*a, **k):
        raise AssertionError("regenerated")

    monkeypatch.setattr(synth, "render_clip", boom)
    assert synth.write_synth_videos(tmp_path / "d", **{**SMALL, "workers": 1}) == root
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == before


def test_other_settings_need_force(tmp_path):
    root = synth.write_synth_videos(tmp_path / "d", **SMALL)
    old = _hashes(root)
    with pytest.raises(VidcliError, match="other settings.*--force") as info:
        synth.write_synth_videos(root, **{**SMALL, "seed": 1})
    assert info.value.exit_code == 2 and str(root) in str(info.value)
    assert _hashes(root) == old
    synth.write_synth_videos(root, **{**SMALL, "seed": 1}, force=True)
    assert json.loads((root / "synth.json").read_text())["seed"] == 1
    assert _hashes(root) != old
    assert _leftovers(tmp_path) == []


def test_foreign_folder_is_not_overwritten(tmp_path):
    root = tmp_path / "mine"
    root.mkdir()
    (root / "thesis.txt").write_text("precious")
    with pytest.raises(VidcliError, match="not a synthetic dataset"):
        synth.write_synth_videos(root, **SMALL)
    with pytest.raises(VidcliError, match="not a video dataset; not deleting"):
        synth.write_synth_videos(root, **SMALL, force=True)
    assert (root / "thesis.txt").read_text() == "precious"
    (tmp_path / "file").write_text("x")
    with pytest.raises(VidcliError, match="not a folder"):
        synth.write_synth_videos(tmp_path / "file", **SMALL)


def test_force_replaces_a_video_tree_without_manifest(tmp_path):
    root = tmp_path / "d"
    (root / "train" / "cats").mkdir(parents=True)
    (root / "train" / "cats" / "a.avi").write_bytes(b"not really")
    synth.write_synth_videos(root, **SMALL, force=True)
    assert not (root / "train" / "cats").exists() and (root / "synth.json").is_file()


def test_empty_folder_is_used(tmp_path):
    (tmp_path / "d").mkdir()
    root = synth.write_synth_videos(tmp_path / "d", **SMALL)
    assert (root / "synth.json").is_file()


def _failing_writer(monkeypatch, after: int, error: BaseException | None = None) -> None:
    real = synth._write_avi
    calls = []

    def flaky(path, frames):
        calls.append(path)
        if len(calls) > after:
            raise error or OSError("disk full (simulated)")
        real(path, frames)

    monkeypatch.setattr(synth, "_write_avi", flaky)


@pytest.mark.parametrize("workers", [1, 2])
def test_failure_midway_leaves_nothing(tmp_path, monkeypatch, workers):
    _failing_writer(monkeypatch, after=3)
    with pytest.raises(VidcliError, match="cannot write .*simulated") as info:
        synth.write_synth_videos(tmp_path / "d", **{**SMALL, "workers": workers})
    assert info.value.exit_code == 1
    assert list(tmp_path.iterdir()) == []


def test_interrupt_midway_leaves_nothing(tmp_path, monkeypatch):
    _failing_writer(monkeypatch, after=5, error=KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        synth.write_synth_videos(tmp_path / "d", **SMALL)
    assert list(tmp_path.iterdir()) == []


def test_failed_force_keeps_the_old_dataset(tmp_path, monkeypatch):
    root = synth.write_synth_videos(tmp_path / "d", **SMALL)
    old = _hashes(root)
    _failing_writer(monkeypatch, after=2)
    with pytest.raises(VidcliError, match="simulated"):
        synth.write_synth_videos(root, **{**SMALL, "seed": 5}, force=True)
    assert _hashes(root) == old
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("kwargs,match", [
    ({"classes": 9}, "classes"), ({"classes": 0}, "classes"), ({"frames": 1}, "frames"), ({"size": 8}, "size"),
    ({"counts": {"train": 0}}, "counts"), ({"counts": {"train": 1, "dev": 2}}, "unknown split"),
])
def test_bad_arguments(tmp_path, kwargs, match):
    with pytest.raises(VidcliError, match=match):
        synth.write_synth_videos(tmp_path / "d", **kwargs)
    assert not (tmp_path / "d").exists()


# --- volumes ---------------------------------------------------------------------------------------

def test_volumes_layout_dtypes_labels_and_sidecar(tmp_path):
    npz = synth.write_synth_volumes(tmp_path / "vol", seed=4, **SMALL_VOL)
    assert npz == tmp_path / "vol" / "synth_volumes_12.npz"
    with np.load(npz) as data:
        assert sorted(data.files) == sorted(f"{s}_{k}" for s in ("train", "val", "test") for k in ("images", "labels"))
        for split, n in SMALL_VOL["counts"].items():
            images, labels = data[f"{split}_images"], data[f"{split}_labels"]
            assert images.shape == (3 * n, 12, 12, 12) and images.dtype == np.uint8
            assert labels.shape == (3 * n, 1) and np.issubdtype(labels.dtype, np.integer)
            assert np.bincount(labels[:, 0], minlength=3).tolist() == [n] * 3
            assert images.std() > 20
    sidecar = json.loads((tmp_path / "vol" / "synth_volumes_12.labels.json").read_text())
    assert sidecar["name"] == "synth_volumes" and sidecar["size"] == 12 and sidecar["seed"] == 4
    assert sidecar["labels"] == list(synth.VOLUME_SHAPES[:3])
    assert sidecar["source"] == "vidcli data synth --volumes"
    assert _leftovers(tmp_path / "vol") == []


def test_volumes_load_through_the_medmnist_reader(tmp_path):
    medmnist = pytest.importorskip("vidcli.datasets.medmnist")
    npz = synth.write_synth_volumes(tmp_path / "vol", **SMALL_VOL)
    x, y, names = medmnist.load_volumes(npz, "train")
    assert x.shape == (9, 12, 12, 12, 1) and x.dtype == np.float32 and x.min() >= 0 and x.max() <= 1
    assert names == list(synth.VOLUME_SHAPES[:3]) and sorted(set(y.tolist())) == [0, 1, 2]


def test_volume_shapes_differ_but_fill_alike():
    """Each shape is its own class; mean brightness alone must not give it away."""
    means = {}
    for shape in synth.VOLUME_SHAPES:
        vols = np.stack([synth.render_volume(shape, s, 20) for s in range(12)]).astype(np.float32)
        assert vols.shape == (12, 20, 20, 20)
        means[shape] = vols.mean()
    assert max(means.values()) - min(means.values()) < 25, means
    a, b = synth.render_volume("sphere", 0, 20), synth.render_volume("cube", 0, 20)
    assert np.abs(a.astype(int) - b).mean() > 3


def test_volumes_deterministic_idempotent_and_force(tmp_path, monkeypatch):
    a = synth.write_synth_volumes(tmp_path / "a", **SMALL_VOL)
    b = synth.write_synth_volumes(tmp_path / "b", **SMALL_VOL)
    c = synth.write_synth_volumes(tmp_path / "c", **SMALL_VOL, seed=1)
    assert a.read_bytes() == b.read_bytes() and a.read_bytes() != c.read_bytes()
    mtime = a.stat().st_mtime_ns

    def boom(*args, **kw):
        raise AssertionError("regenerated")

    with monkeypatch.context() as m:
        m.setattr(synth, "render_volume", boom)
        assert synth.write_synth_volumes(tmp_path / "a", **SMALL_VOL) == a
    assert a.stat().st_mtime_ns == mtime
    with pytest.raises(VidcliError, match="--force"):
        synth.write_synth_volumes(tmp_path / "a", **SMALL_VOL, seed=1)
    assert a.read_bytes() == b.read_bytes()
    synth.write_synth_volumes(tmp_path / "a", **SMALL_VOL, seed=1, force=True)
    assert a.read_bytes() == c.read_bytes()
    assert json.loads(a.with_name("synth_volumes_12.labels.json").read_text())["seed"] == 1


def test_volumes_failure_leaves_nothing(tmp_path, monkeypatch):
    def broken(*a, **k):
        raise OSError("simulated")

    monkeypatch.setattr(np, "savez_compressed", broken)
    with pytest.raises(VidcliError, match="simulated"):
        synth.write_synth_volumes(tmp_path / "vol", **SMALL_VOL)
    assert list((tmp_path / "vol").iterdir()) == []


# --- the command ------------------------------------------------------------------------------------

def test_cli_synth_videos_and_volumes(tmp_path):
    from vidcli.cli.main import app

    runner = CliRunner()
    args = ["data", "synth", "--out", str(tmp_path / "v"), "--classes", "2", "--train", "1", "--val", "1",
            "--test", "1", "--frames", "4", "--size", "16"]
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout.strip().splitlines()[-1])["path"] == str(tmp_path / "v")
    assert len(scan_split(tmp_path / "v", "val")) == 2
    again = runner.invoke(app, [*args, "--seed", "9"])
    assert again.exit_code == 2 and "--force" in again.output
    vol = runner.invoke(app, ["data", "synth", "--volumes", "--out", str(tmp_path / "vol"), "--train", "2",
                              "--val", "1", "--test", "1", "--size", "16", "--json"])
    assert vol.exit_code == 0, vol.output
    assert (tmp_path / "vol" / "synth_volumes_16.npz").is_file()


@pytest.mark.parametrize(("args", "said"), [(["--frames", "8"], "--frames: volumes are cubes"),
                                            (["--classes", "7"], "--classes 7: --volumes has 6 shapes")])
def test_synth_volumes_refuses_what_it_cannot_honour(tmp_path, args, said):
    from vidcli.cli.main import app

    result = CliRunner().invoke(app, ["data", "synth", "--volumes", "--out", str(tmp_path / "vol"), *args])
    assert result.exit_code == 2 and said in result.stderr
    assert not (tmp_path / "vol").exists()


def test_synth_volumes_takes_the_size_asked_for(tmp_path):
    from vidcli.cli.main import app

    result = CliRunner().invoke(app, ["data", "synth", "--volumes", "--out", str(tmp_path / "vol"), "--size", "64",
                                      "--classes", "2", "--train", "1", "--val", "1", "--test", "1"])
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "vol" / "synth_volumes_64.npz").is_file()
