"""Video input: real files, lying headers, truncated and fake files, odd sizes, sampling and padding."""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import VIDEOS

from vidcli.errors import VidcliError
from vidcli.video import decode

SIZE = (32, 32)


def _video(name: str) -> Path:
    path = VIDEOS / name
    assert path.is_file(), f"test data missing: {path}"
    return path


def _write(path: Path, frames: list[np.ndarray], color: bool = True) -> Path:
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (w, h), isColor=color)
    assert writer.isOpened()
    for f in frames:
        writer.write(f)
    writer.release()
    assert path.stat().st_size > 0
    return path


def _counter_video(path: Path, n: int, size: int = 32) -> Path:
    """Frame i is a flat grey of value 8*i, so a decoded frame tells its own index."""
    return _write(path, [np.full((size, size, 3), 8 * i, np.uint8) for i in range(n)])


def _indices(clip: np.ndarray) -> list[int]:
    return [round(float(f.mean()) / 8) for f in clip]


def _truncated(tmp_path: Path, name: str, fraction: float) -> Path:
    data = _video(name).read_bytes()
    out = tmp_path / f"cut_{fraction}_{name}"
    out.write_bytes(data[: int(len(data) * fraction)])
    return out


def _error(fn, *args, **kw) -> str:
    with pytest.raises(VidcliError) as info:
        fn(*args, **kw)
    assert info.value.exit_code == 2
    return str(info.value)


@pytest.mark.parametrize(("name", "width", "height", "frames"),
                         [("Megamind.avi", 720, 528, 270), ("tree.avi", 320, 240, 68), ("box.mp4", 640, 480, 455)])
def test_real_videos_decode(name, width, height, frames):
    path = _video(name)
    info = decode.probe(path)
    assert (info.width, info.height) == (width, height)
    assert info.fps > 0
    clip = decode.read_clip(path, 8, 2, (64, 48))
    assert clip.shape == (8, 64, 48, 3) and clip.dtype == np.uint8
    assert clip.std() > 1, "a real video is not a flat image"
    if name != "box.mp4":  # the two AVIs are short enough to count quickly
        assert sum(1 for _ in decode.iter_frames(path)) == frames


def test_tree_header_lies():
    path = _video("tree.avi")
    assert decode.probe(path).reported_frames == 444
    assert sum(1 for _ in decode.iter_frames(path)) == 68


@pytest.mark.parametrize("start", [60, 100, 300, 443, "center"])
def test_tree_start_beyond_true_length_gives_real_frames(start):
    path = _video("tree.avi")
    clip = decode.read_clip(path, 8, 2, SIZE, start=start)
    assert clip.shape == (8, *SIZE, 3)
    for frame in clip:
        assert frame.mean() > 20, "black frame"
    last = np.stack(list(decode.iter_frames(path, SIZE)))[-15:]  # the frames letterboxed by the clips' rule
    if start != "center":  # clamped to the last full clip: the last 15 decodable frames, every second one
        np.testing.assert_array_equal(clip, last[::2])


def test_tree_random_starts_stay_in_range():
    path = _video("tree.avi")
    for seed in range(3):
        clip = decode.read_clip(path, 4, 4, SIZE, start="random", rng=np.random.default_rng(seed))
        assert min(f.mean() for f in clip) > 20


def test_missing_file(tmp_path):
    msg = _error(decode.read_clip, tmp_path / "nope.mp4", 4, 1, SIZE)
    assert "nope.mp4" in msg and "not found" in msg


def test_folder_is_not_a_video(tmp_path):
    assert "folder" in _error(decode.read_clip, tmp_path, 4, 1, SIZE)


def test_zero_byte_file(tmp_path):
    p = tmp_path / "empty.mp4"
    p.touch()
    msg = _error(decode.read_clip, p, 4, 1, SIZE)
    assert "empty.mp4" in msg and "empty" in msg


def test_text_file_named_mp4(tmp_path):
    p = tmp_path / "notes.mp4"
    p.write_text("this is not a video\n" * 50)
    msg = _error(decode.read_clip, p, 4, 1, SIZE)
    assert "notes.mp4" in msg
    with pytest.raises(VidcliError):
        list(decode.iter_frames(p))


def test_random_bytes_named_avi(tmp_path):
    p = tmp_path / "noise.avi"
    p.write_bytes(np.random.default_rng(0).integers(0, 256, 100_000, dtype=np.uint8).tobytes())
    assert "noise.avi" in _error(decode.read_clip, p, 4, 1, SIZE)


@pytest.mark.parametrize(("name", "fraction"), [("box.mp4", 0.3), ("Megamind.avi", 0.3), ("box.mp4", 0.05),
                                                ("Megamind.avi", 0.01), ("box.mp4", 0.001)])
def test_truncated_copy_decodes_or_fails_clearly(tmp_path, name, fraction):
    path = _truncated(tmp_path, name, fraction)
    t0 = time.perf_counter()
    try:
        clip = decode.read_clip(path, 8, 4, SIZE, start="center")
    except VidcliError as exc:
        assert path.name in str(exc)
    else:
        assert clip.shape == (8, *SIZE, 3)
        assert clip.mean() > 5, "decoded frames should not be black"
    assert time.perf_counter() - t0 < 30


def test_truncated_clip_uses_frames_that_exist(tmp_path):
    """Megamind cut at 30% still holds ~75 frames: a clip asked for at frame 250 comes from the end of those."""
    path = _truncated(tmp_path, "Megamind.avi", 0.3)
    decoded = list(decode.iter_frames(path, SIZE))
    assert 10 < len(decoded) < 270
    clip = decode.read_clip(path, 4, 2, SIZE, start=250)
    np.testing.assert_array_equal(clip, np.stack(decoded[-7:][::2]))


def test_short_video_is_padded_with_its_last_frame(tmp_path):
    path = _counter_video(tmp_path / "five.avi", 5)
    clip = decode.read_clip(path, 8, 1, SIZE, start=0)
    assert _indices(clip) == [0, 1, 2, 3, 4, 4, 4, 4]
    for i in range(5, 8):
        np.testing.assert_array_equal(clip[i], clip[4])
    clip = decode.read_clip(path, 4, 3, SIZE, start="center")
    assert _indices(clip) == [0, 3, 3, 3]  # the clip's own last frame repeats


def test_single_frame_video(tmp_path):
    path = _counter_video(tmp_path / "one.avi", 1)
    clip = decode.read_clip(path, 4, 2, SIZE)
    assert clip.shape == (4, *SIZE, 3)
    assert all(np.array_equal(f, clip[0]) for f in clip)


def test_grayscale_video_becomes_rgb(tmp_path):
    frames = [np.full((24, 32), 40 + 10 * i, np.uint8) for i in range(6)]
    path = _write(tmp_path / "gray.avi", frames, color=False)
    clip = decode.read_clip(path, 4, 1, (24, 32), start=0)
    assert clip.shape == (4, 24, 32, 3)
    np.testing.assert_array_equal(clip[..., 0], clip[..., 1])
    np.testing.assert_array_equal(clip[..., 1], clip[..., 2])
    assert abs(float(clip[1].mean()) - 50) < 4


def test_to_rgb_layouts():
    gray = np.full((4, 5), 9, np.uint8)
    assert decode.to_rgb(gray).shape == (4, 5, 3)
    assert decode.to_rgb(gray[..., None]).shape == (4, 5, 3)
    bgr = np.zeros((4, 5, 3), np.uint8)
    bgr[..., 0] = 255  # blue in OpenCV's order
    assert decode.to_rgb(bgr)[0, 0].tolist() == [0, 0, 255]
    bgra = np.zeros((4, 5, 4), np.uint8)
    bgra[..., 2] = 200
    assert decode.to_rgb(bgra)[0, 0].tolist() == [200, 0, 0]


def test_resize_with_pad_keeps_aspect_and_pads_black():
    frame = np.full((17, 33, 3), 255, np.uint8)  # wide: fills the width, padded above and below
    out = decode.resize_with_pad(frame, (32, 32))
    assert out.shape == (32, 32, 3)
    rows = out[:, 16, 0]
    white = np.flatnonzero(rows > 128)
    assert len(white) == 16  # 17 * 32/33 rounded
    assert white[0] == 8 and (out[:8] == 0).all() and (out[24:] == 0).all()
    tall = decode.resize_with_pad(np.full((33, 17, 3), 255, np.uint8), (32, 32))
    assert (tall[:, :8] == 0).all() and (tall[:, 24:] == 0).all() and (tall[:, 8:24] == 255).all()


def test_resize_with_pad_upscales_and_matches_size():
    frame = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
    assert decode.resize_with_pad(frame, (4, 6)) is frame
    out = decode.resize_with_pad(frame, (16, 24))
    assert out.shape == (16, 24, 3) and out.dtype == np.uint8
    assert (out > 0).mean() > 0.9  # same aspect: no padding


def test_non_square_video(tmp_path):
    """OpenCV's writers round odd sizes to even, so the file is 34x18; resize_with_pad is tested at 33x17 above."""
    frames = [np.full((18, 34, 3), 200, np.uint8) for _ in range(4)]
    path = _write(tmp_path / "wide.avi", frames)
    info = decode.probe(path)
    assert (info.width, info.height) == (34, 18)
    clip = decode.read_clip(path, 2, 1, (32, 32))
    assert clip.shape == (2, 32, 32, 3)
    assert (clip[:, :6] == 0).all() and (clip[:, 26:] == 0).all()
    assert clip[:, 10:22].min() > 150


def test_read_clips_are_evenly_spaced(tmp_path):
    path = _counter_video(tmp_path / "count.avi", 30)
    clips = decode.read_clips(path, 4, 2, SIZE, clips=3)
    assert clips.shape == (3, 4, *SIZE, 3)
    # span 7 in 30 frames: starts at 0, 11.5 -> 12 (round half to even), 23
    assert [_indices(c) for c in clips] == [[0, 2, 4, 6], [12, 14, 16, 18], [23, 25, 27, 29]]


def test_read_clips_over_a_lying_header(tmp_path):
    clips = decode.read_clips(_video("tree.avi"), 4, 2, SIZE, clips=4)
    assert clips.shape == (4, 4, *SIZE, 3)
    assert clips.reshape(-1, *SIZE, 3).mean(axis=(1, 2, 3)).min() > 20
    assert not np.array_equal(clips[0], clips[-1])


def test_center_start(tmp_path):
    path = _counter_video(tmp_path / "count.avi", 20)
    assert _indices(decode.read_clip(path, 4, 2, SIZE, start="center")) == [6, 8, 10, 12]
    assert _indices(decode.read_clip(path, 4, 2, SIZE, start=100)) == [13, 15, 17, 19]


def test_random_start_is_deterministic_with_a_seeded_rng(tmp_path):
    path = _counter_video(tmp_path / "count.avi", 30)

    def first(seed: int) -> int:
        return _indices(decode.read_clip(path, 4, 1, SIZE, start="random", rng=np.random.default_rng(seed)))[0]

    assert [first(s) for s in range(6)] == [first(s) for s in range(6)]
    assert len({first(s) for s in range(10)}) > 2
    assert all(0 <= first(s) <= 26 for s in range(10))


def test_choose_starts():
    assert decode.choose_starts(100, 10, 1, "center", None) == [45]
    assert decode.choose_starts(100, 10, 3, "center", None) == [0, 45, 90]
    assert decode.choose_starts(5, 10, 3, "center", None) == [0, 0, 0]
    assert decode.choose_starts(100, 10, 1, 95, None) == [90]
    a = decode.choose_starts(100, 10, 1, "random", np.random.default_rng(3))
    assert a == decode.choose_starts(100, 10, 1, "random", np.random.default_rng(3))


def test_bad_sampling_arguments(tmp_path):
    path = _counter_video(tmp_path / "count.avi", 4)
    assert "frames" in _error(decode.read_clip, path, 0, 1, SIZE)
    assert "frame_step" in _error(decode.read_clip, path, 4, 0, SIZE)
