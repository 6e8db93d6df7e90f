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


# --- PyAV: the same frames as OpenCV's forward read, exact key-frame seeks, one open per clip ---------------


def _opencv(monkeypatch) -> None:
    monkeypatch.setenv("VIDCLI_DECODER", "opencv")


@pytest.mark.parametrize("name", ["Megamind.avi", "tree.avi", "box.mp4"])
def test_pyav_and_opencv_decode_the_same_frames(name, monkeypatch):
    path = _video(name)
    ours = list(decode.iter_frames(path))
    _opencv(monkeypatch)
    theirs = list(decode.iter_frames(path))
    assert len(ours) == len(theirs)
    assert all(np.array_equal(a, b) for a, b in zip(ours, theirs, strict=True))


def _encode(frames: list[np.ndarray], dest: Path, codec: str, gop: int, bframes: int) -> Path:
    """Re-encode real frames with PyAV: other codecs, containers and key-frame intervals."""
    import av

    h, w = frames[0].shape[:2]
    with av.open(str(dest), "w") as out:
        s = out.add_stream(codec, rate=25)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        s.codec_context.gop_size = gop
        if codec == "libx264":
            s.options = {"preset": "ultrafast", "bf": str(bframes), "keyint_min": str(gop)}
        elif codec == "libvpx-vp9":
            s.options = {"deadline": "realtime", "cpu-used": "8"}
        else:
            s.codec_context.max_b_frames = bframes
        for arr in frames:
            out.mux(s.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")))
        out.mux(s.encode(None))
    return dest


@pytest.fixture(scope="module")
def variants(tmp_path_factory) -> dict[str, Path]:
    """Megamind (real footage, 160x120, 90 frames) as H.264 with B-frames in MP4 and Matroska, MPEG-4 part 2
    with B-frames and MS-MPEG-4 v3 in AVI, VP9 in WebM."""
    folder = tmp_path_factory.mktemp("variants")
    frames = [cv2.resize(f, (160, 120), interpolation=cv2.INTER_AREA)
              for f in decode.iter_frames(_video("Megamind.avi"))][:90]
    specs = {"h264.mp4": ("libx264", 20, 3), "h264.mkv": ("libx264", 16, 2), "mpeg4.avi": ("mpeg4", 25, 2),
             "mp43.avi": ("msmpeg4v3", 30, 0), "vp9.webm": ("libvpx-vp9", 24, 0)}
    return {name: _encode(frames, folder / name, *spec) for name, spec in specs.items()}


@pytest.mark.parametrize("name", ["h264.mp4", "h264.mkv", "mpeg4.avi", "mp43.avi", "vp9.webm"])
def test_seeking_gives_the_frames_of_a_forward_read(variants, name, monkeypatch):
    """Random clips read by key-frame seeks are exactly the frames of a full forward pass, whose count is
    OpenCV's."""
    path = variants[name]
    every = list(decode.iter_frames(path, SIZE))
    rng = np.random.default_rng(0)
    for _ in range(12):
        first = int(rng.integers(0, len(every)))
        clip = decode.read_clip(path, 4, 3, SIZE, start=first)
        start = min(first, len(every) - 10)
        np.testing.assert_array_equal(clip, np.stack(every[start : start + 10 : 3]))
    _opencv(monkeypatch)
    assert sum(1 for _ in decode.iter_frames(path)) == len(every)


def test_a_clip_opens_its_file_once_and_decodes_from_the_nearest_key_frame(variants, monkeypatch):
    import av

    from vidcli.video import avreader

    path = variants["h264.mp4"]
    decode.read_clip(path, 2, 1, SIZE, start=0)  # the index is remembered from here on
    opens, packets = [], []
    real_open, real_decode = av.open, avreader._decode
    monkeypatch.setattr(av, "open", lambda *a, **k: opens.append(a) or real_open(*a, **k))
    monkeypatch.setattr(avreader, "_decode", lambda cc, pkt: packets.append(pkt) or real_decode(cc, pkt))
    decode.read_clip(path, 3, 2, SIZE, start=45)  # key frames every 20: frames 40..49 decode, 45..49 are kept
    assert len(opens) == 1
    sent = [p.opaque[0] for p in packets if p is not None]
    assert sent[0] == 40 and sent == list(range(40, 40 + len(sent)))
    assert len(sent) <= 10 + 6  # and a few more while B-frames and decoder threads hold pictures back


def test_index_counts_what_decodes_not_what_the_header_says():
    from vidcli.video.avreader import AvVideo

    path, st = decode.check_file(_video("tree.avi"))
    with AvVideo(path, st) as video:
        assert (video.index.reported, video.index.count) == (444, 68)


def test_opencv_reads_what_pyav_cannot_open(monkeypatch):
    from vidcli.video import avreader

    def refuse(*args):
        raise avreader.CannotOpen("test")

    expected = decode.read_clip(_video("tree.avi"), 4, 2, SIZE, start=10)
    monkeypatch.setattr(avreader, "AvVideo", refuse)
    clip = decode.read_clip(_video("tree.avi"), 4, 2, SIZE, start=10)
    assert clip.shape == expected.shape
    assert np.abs(clip.astype(int) - expected).max() <= 1  # OpenCV's INTER_AREA vs FFmpeg's area scaler
    assert decode.probe(_video("tree.avi")).reported_frames == 444


def test_unknown_decoder_setting(monkeypatch):
    monkeypatch.setenv("VIDCLI_DECODER", "gstreamer")
    assert "VIDCLI_DECODER" in _error(decode.read_clip, _video("tree.avi"), 4, 1, SIZE)


@pytest.mark.parametrize("name", ["Megamind.avi", "box.mp4"])
def test_shrinking_in_ffmpeg_stays_close_to_opencv_area(name, monkeypatch):
    """The letterbox rule: FFmpeg's area scaler from the decoder's YUV instead of OpenCV's INTER_AREA on
    full-size RGB. Same geometry (black bars identical), pixels within a few levels on average."""
    from vidcli.video.fit import Fit

    ours = decode.read_clip(_video(name), 4, 8, (112, 112), start=0)
    _opencv(monkeypatch)
    theirs = decode.read_clip(_video(name), 4, 8, (112, 112), start=0)
    info = decode.probe(_video(name))
    bar = (112 - Fit("pad", (112, 112)).scaled(info.height, info.width)[0]) // 2
    for clip in (ours, theirs):
        assert (clip[:, :bar] == 0).all() and (clip[:, 112 - bar :] == 0).all()
        assert clip[:, bar : 112 - bar].mean() > 20
    diff = np.abs(ours.astype(int) - theirs)
    assert diff.mean() < 2.0 and np.percentile(diff, 99) < 16


NOISY = """
import sys
from vidcli.errors import VidcliError
from vidcli.video import decode
for path in sys.argv[1:]:
    try:
        decode.read_clips(path, 8, 4, (32, 32), clips=3)
        sum(1 for _ in decode.iter_frames(path))
    except VidcliError as exc:
        print(f"error: {exc}", file=sys.stderr)
"""


@pytest.mark.parametrize("decoder", ["pyav", "opencv"])
def test_damaged_videos_print_nothing_but_our_error_line(tmp_path, decoder):
    """FFmpeg's decoders complain on stderr about every damaged packet; a fresh process reading cut and
    corrupted copies of the real videos prints only our own one-line errors."""
    import os
    import subprocess
    import sys

    paths = [_truncated(tmp_path, n, f) for n in ("box.mp4", "Megamind.avi", "tree.avi") for f in (0.001, 0.05, 0.5)]
    data = bytearray(_video("box.mp4").read_bytes())
    rng = np.random.default_rng(0)
    for at in rng.integers(len(data) // 10, len(data) - 100, 20):
        data[at : at + 50] = rng.integers(0, 256, 50, dtype=np.uint8).tobytes()
    (tmp_path / "corrupt.mp4").write_bytes(bytes(data))
    paths.append(tmp_path / "corrupt.mp4")
    env = {**os.environ, "VIDCLI_DECODER": decoder}
    proc = subprocess.run([sys.executable, "-c", NOISY, *map(str, paths)], capture_output=True, text=True, env=env,
                          timeout=300, cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert lines and all(line.startswith("error: ") for line in lines), proc.stderr[:2000]
    assert len(lines) <= len(paths)
