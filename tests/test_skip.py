"""Skipping the pictures no clip frame needs (FFmpeg's skip_frame NONREF) changes no sample: the same frame
numbers and pixels as decoding everything, on the test videos and on re-encodings of real footage with a
B-pyramid (B-frames that are references), open GOPs, no B-frames, and VP9; damaged files read the same."""

from __future__ import annotations

import itertools
import shutil
import threading
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from conftest import VIDEOS

from vidcli.errors import VidcliError
from vidcli.video import avreader, decode

SIZE = (40, 56)
# name: codec, key frame every, B-frames, encoder options
ENCODINGS = {
    "h264_pyramid.mp4": ("libx264", 40, 3, {"preset": "veryfast", "b-pyramid": "normal", "keyint_min": "40"}),
    "h264_open.mkv": ("libx264", 30, 3, {"preset": "veryfast", "x264-params": "open-gop=1:keyint-min=30"}),
    "mpeg4_open.avi": ("mpeg4", 30, 2, {}),
    "mp43.avi": ("msmpeg4v3", 30, 0, {}),
    "vp9.webm": ("libvpx-vp9", 30, 0, {"deadline": "realtime", "cpu-used": "8"}),
}
SKIPPING = {"box.mp4", "h264_pyramid.mp4", "h264_open.mkv", "mpeg4_open.avi"}  # Megamind.avi: packed B-frames


def _encode(frames: list[np.ndarray], dest: Path, codec: str, gop: int, bframes: int, options: dict) -> Path:
    h, w = frames[0].shape[:2]
    with av.open(str(dest), "w") as out:
        s = out.add_stream(codec, rate=25)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        s.codec_context.gop_size, s.codec_context.max_b_frames = gop, bframes
        s.options = options
        for arr in frames:
            out.mux(s.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")))
        out.mux(s.encode(None))
    return dest


def _index(path: Path) -> avreader.Index:
    with avreader.AvVideo(*decode.check_file(path)) as video:
        return video.index


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("skip")
    real = itertools.islice(decode.iter_frames(VIDEOS / "Megamind.avi"), 120)
    frames = [cv2.resize(f, (160, 120), interpolation=cv2.INTER_AREA) for f in real]
    made = {name: _encode(frames, folder / name, *spec) for name, spec in ENCODINGS.items()}
    # the cases that matter are really there: B-frames other pictures refer to, groups that lean on the last
    with av.open(str(made["h264_pyramid.mp4"])) as c:
        c.streams.video[0].codec_context.skip_frame = "NONREF"
        assert any(f.pict_type == av.video.frame.PictureType.B for f in c.decode(video=0))
    assert _index(made["h264_open.mkv"]).leading and _index(made["mpeg4_open.avi"]).leading
    return {**made, **{name: VIDEOS / name for name in ("Megamind.avi", "box.mp4", "tree.avi")}}


def _spy(monkeypatch) -> list[str]:
    """The skip setting each packet went to the decoder with."""
    sent: list[str] = []
    real = avreader._decode

    def decode_(cc, pkt):
        if pkt is not None:
            sent.append(cc.skip_frame)
        return real(cc, pkt)

    monkeypatch.setattr(avreader, "_decode", decode_)
    return sent


@pytest.mark.parametrize("threads", ["1", "0"])
@pytest.mark.parametrize("name", [*ENCODINGS, "Megamind.avi", "box.mp4", "tree.avi"])
def test_skipping_changes_no_sample(videos, name, threads, tmp_path, monkeypatch):
    """Random clips read with skipping equal the same clips decoded in full, and the frames of a forward pass."""
    monkeypatch.setenv("VIDCLI_DECODE_THREADS", threads)
    path = shutil.copyfile(videos[name], tmp_path / name)  # a file of its own: nothing numbered yet
    index = _index(path)
    assert (index.numbers is not None) == (name in SKIPPING)
    sent = _spy(monkeypatch)
    rng = np.random.default_rng(len(name))
    clips = [(int(rng.integers(0, index.count)), int(rng.integers(1, 4))) for _ in range(16)]
    monkeypatch.setenv("VIDCLI_DECODE_SKIP", "0")
    full = [decode.read_clip(path, 6, step, SIZE, start=first) for first, step in clips]
    assert "NONREF" not in sent
    monkeypatch.setenv("VIDCLI_DECODE_SKIP", "1")
    for (first, step), expected in zip(clips, full, strict=True):
        np.testing.assert_array_equal(decode.read_clip(path, 6, step, SIZE, start=first), expected)
    every = list(decode.iter_frames(path, SIZE))  # numbers every frame, from the first key frame
    for _ in range(16):
        first, step = int(rng.integers(0, len(every))), int(rng.integers(1, 4))
        start = min(first, len(every) - 1 - 5 * step)
        clip = decode.read_clip(path, 6, step, SIZE, start=first)
        np.testing.assert_array_equal(clip, np.stack(every[start : start + 5 * step + 1 : step]))
    assert ("NONREF" in sent) == (name in SKIPPING)
    assert index.numbers is None or index.numbers.usable  # no read had to start over


def test_skipping_decodes_fewer_pictures(videos, tmp_path, monkeypatch):
    path = shutil.copyfile(videos["h264_pyramid.mp4"], tmp_path / "a.mp4")
    sent = _spy(monkeypatch)
    decode.read_clip(path, 4, 2, SIZE, start=60)  # frames 60..66 from the key frame at 40, every picture
    first = len(sent)
    assert first >= 27 and "NONREF" not in sent
    decode.read_clip(path, 4, 2, SIZE, start=60)  # now numbered: 40..59 and 61, 63, 65 need not decode
    assert len(sent) - first == first and sent[first:].count("NONREF") >= 20


def test_numbers_that_do_not_hold_send_the_read_back_to_decoding_everything(videos, tmp_path):
    path = shutil.copyfile(videos["h264_pyramid.mp4"], tmp_path / "a.mp4")
    every = list(decode.iter_frames(path, SIZE))
    numbers = _index(path).numbers
    a, b = numbers.packet_of[50], numbers.packet_of[52]  # as if two frames had been numbered the other way
    numbers.packet_of[50], numbers.packet_of[52], numbers.of_packet[a], numbers.of_packet[b] = b, a, 52, 50
    clip = decode.read_clip(path, 3, 2, SIZE, start=50)
    np.testing.assert_array_equal(clip, np.stack(every[50:55:2]))
    assert not numbers.usable
    np.testing.assert_array_equal(decode.read_clip(path, 3, 2, SIZE, start=50), clip)


def test_decoders_in_parallel_threads_keep_their_frames_apart(videos, tmp_path):
    """tf.data decodes clips in parallel threads: every frame keeps the position its own packet was tagged with."""
    paths = [shutil.copyfile(videos[name], tmp_path / f"{i}_{name}")
             for i, name in enumerate(["h264_pyramid.mp4", "mpeg4_open.avi"] * 2)]
    every = {path: list(decode.iter_frames(path, SIZE)) for path in paths}  # and every frame numbered
    wrong: list = []

    def work(seed: int) -> None:
        rng = np.random.default_rng(seed)
        for _ in range(20):
            path = paths[int(rng.integers(0, len(paths)))]
            first = int(rng.integers(0, len(every[path]) - 9))
            clip = decode.read_clip(path, 5, 2, SIZE, start=first)
            if not np.array_equal(clip, np.stack(every[path][first : first + 9 : 2])):
                wrong.append((path.name, first))

    threads = [threading.Thread(target=work, args=(seed,)) for seed in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not wrong
    assert all(_index(path).numbers.usable for path in paths)  # no read had to start over


def _damaged(tmp_path: Path) -> list[Path]:
    data = (VIDEOS / "box.mp4").read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    rng = np.random.default_rng(0)
    broken = bytearray(data)
    for at in rng.integers(len(data) // 10, len(data) - 100, 20):
        broken[at : at + 50] = rng.integers(0, 256, 50, dtype=np.uint8).tobytes()
    (tmp_path / "corrupt.mp4").write_bytes(bytes(broken))
    return [cut, tmp_path / "corrupt.mp4"]


def _read_or_error(path: Path, first: int, step: int):
    try:
        return decode.read_clip(path, 6, step, SIZE, start=first)
    except VidcliError as exc:
        return str(exc)


@pytest.mark.parametrize("which", [0, 1])
def test_damaged_files_read_the_same_with_skipping(tmp_path, monkeypatch, which):
    """One decoder thread: with frame threads FFmpeg conceals damage differently from run to run."""
    monkeypatch.setenv("VIDCLI_DECODE_THREADS", "1")
    path = _damaged(tmp_path)[which]
    rng = np.random.default_rng(which)
    clips = [(int(rng.integers(0, 456)), int(rng.integers(1, 4))) for _ in range(8)]
    monkeypatch.setenv("VIDCLI_DECODE_SKIP", "0")
    full = [_read_or_error(path, *clip) for clip in clips]
    monkeypatch.setenv("VIDCLI_DECODE_SKIP", "1")
    sent = _spy(monkeypatch)
    for clip, expected in zip(clips, full, strict=True):
        got = _read_or_error(path, *clip)
        assert type(got) is type(expected)
        if isinstance(got, str):
            assert got == expected
        else:
            np.testing.assert_array_equal(got, expected)
    # the cut file skips in its intact half; damage (concealed frames) keeps the corrupt one decoding everything
    assert ("NONREF" in sent) == (which == 0)
    assert _index(path).numbers.usable == (which == 0)
