"""The decoded-frame cache (`data.cache`): the same samples as without it, never stale frames, and a cache that
cannot be written (read-only, full disk, over its limit, shared by threads and processes) never stops training."""

from __future__ import annotations

import collections
import errno
import hashlib
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, VIDEOS, env

from vidcli import recipe as recipe_mod
from vidcli.datasets.source import frame_cache, open_source, segment_views
from vidcli.video import avreader, cache, decode
from vidcli.video.cache import FrameCache
from vidcli.video.fit import Fit

SIZE = (32, 32)
NAMES = ("Megamind.avi", "tree.avi", "box.mp4")


@pytest.fixture
def videos(tmp_path) -> Path:
    """The real test videos as a dataset: data/train/<stem>/<file>."""
    root = tmp_path / "data"
    for name in NAMES:
        (root / "train" / Path(name).stem).mkdir(parents=True)
        shutil.copyfile(VIDEOS / name, root / "train" / Path(name).stem / name)
    return root


def _data(root: Path, **kw) -> recipe_mod.DataConfig:
    raw = {"root": str(root), "frames": 6, "frame_step": 3, "size": list(SIZE), **kw}
    return recipe_mod.from_dict(recipe_mod.DataConfig, raw)


def _samples(source, seeds=range(3)) -> list[np.ndarray]:
    out = []
    for i in range(len(source)):
        out += [source.load(i, training=True, seed=s) for s in seeds]
        out.append(source.load(i))
    return out


def _no_decoding(monkeypatch) -> None:
    def refuse(*args):
        raise AssertionError("a cached video was decoded again")

    monkeypatch.setattr(avreader, "AvVideo", refuse)


def _entries(root: Path) -> list[Path]:
    return sorted(root.rglob("*.frames"))


def _leftovers(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if ".partial-" in p.name]


def test_recipe_keys_and_default_folder(tmp_path, monkeypatch, videos):
    d = _data(videos)
    assert (d.cache, d.cache_dir, d.cache_limit_gb) == (False, None, 20.0)
    assert open_source(d, "train").cache is None
    with pytest.raises(Exception, match="data.cache_limit_gb"):
        _data(videos, cache_limit_gb=0)
    monkeypatch.setenv("VIDCLI_CACHE", str(tmp_path / "env-cache"))
    c = frame_cache(_data(videos, cache=True))
    assert c.root == tmp_path / "env-cache" and (tmp_path / "env-cache").is_dir()
    monkeypatch.delenv("VIDCLI_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert cache.default_root() == tmp_path / "home" / ".cache" / "vidcli"


def test_same_samples_with_and_without_the_cache(tmp_path, videos, monkeypatch):
    plain = open_source(_data(videos), "train")
    cached = open_source(_data(videos, cache=True, cache_dir=str(tmp_path / "c")), "train")
    expected = _samples(plain)
    first = _samples(cached)  # fills the cache
    assert cached.cache.stats["fills"] == len(NAMES)
    assert len(_entries(tmp_path / "c")) == len(NAMES)
    _no_decoding(monkeypatch)
    second = _samples(cached)  # reads only the frames each clip needs
    for a, b, c in zip(expected, first, second, strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)


def test_same_segment_views_with_and_without_the_cache(tmp_path):
    store = FrameCache(tmp_path / "c").check()
    for name in NAMES:
        path = VIDEOS / name
        for kw in ({"rng": np.random.default_rng(1)}, {"clips": 2, "crops": 3}, {"clips": 1, "crops": 10}):
            rng = kw.pop("rng", None)
            plain = segment_views(path, "videos", 8, (48, 48), "segments", rng=rng, **kw)
            rng = np.random.default_rng(1) if rng is not None else None
            cached = segment_views(path, "videos", 8, (48, 48), "segments", rng=rng, cache=store, **kw)
            np.testing.assert_array_equal(plain, cached)
    lengths: dict = {}
    segment_views(VIDEOS / "tree.avi", "videos", 8, (48, 48), "segments", lengths=lengths, cache=store)
    assert lengths[str(VIDEOS / "tree.avi")] == 68  # the header says 444


def test_each_size_and_rule_has_its_own_entry(tmp_path):
    store = FrameCache(tmp_path / "c").check()
    a = decode.read_clip(VIDEOS / "tree.avi", 4, 2, (32, 32), cache=store)
    b = decode.read_clip(VIDEOS / "tree.avi", 4, 2, (24, 40), cache=store)
    segment_views(VIDEOS / "tree.avi", "videos", 4, (32, 32), "segments", cache=store)
    assert a.shape == (4, 32, 32, 3) and b.shape == (4, 24, 40, 3)
    assert len(_entries(tmp_path / "c")) == 3


def _counter(path: Path, n: int, base: int) -> Path:
    """Frame i is a flat grey of value base + 8 * i (MJPEG), so a frame tells which file it came from."""
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (32, 32))
    for i in range(n):
        writer.write(np.full((32, 32, 3), base + 8 * i, np.uint8))
    writer.release()
    return path


def test_a_replaced_video_is_decoded_again(tmp_path):
    store = FrameCache(tmp_path / "c").check()
    video = _counter(tmp_path / "v.avi", 20, 10)
    old = decode.read_clip(video, 4, 1, SIZE, start=0, cache=store)
    new = _counter(tmp_path / "new.avi", 20, 60)
    os.replace(new, video)
    got = decode.read_clip(video, 4, 1, SIZE, start=0, cache=store)
    np.testing.assert_array_equal(got, decode.read_clip(video, 4, 1, SIZE, start=0))
    assert abs(float(got[0].mean()) - 60) < 4 and abs(float(old[0].mean()) - 10) < 4
    assert len(_entries(tmp_path / "c")) == 1  # the stale entry is gone


def test_a_video_rewritten_in_place_with_its_old_mtime_is_decoded_again(tmp_path):
    store = FrameCache(tmp_path / "c").check()
    video = _counter(tmp_path / "v.avi", 20, 10)
    before = video.stat()
    decode.read_clip(video, 4, 1, SIZE, start=0, cache=store)
    data = _counter(tmp_path / "other.avi", 20, 90).read_bytes()
    with open(video, "r+b") as fh:  # same file, same size, content changed, mtime put back
        fh.write(data[: before.st_size].ljust(before.st_size, b"\0"))
    os.utime(video, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert (video.stat().st_size, video.stat().st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    got = decode.read_clip(video, 4, 1, SIZE, start=0, cache=store)
    assert abs(float(got[0].mean()) - 90) < 4


def test_a_truncated_video_is_decoded_again(tmp_path):
    store = FrameCache(tmp_path / "c").check()
    video = tmp_path / "Megamind.avi"
    shutil.copyfile(VIDEOS / "Megamind.avi", video)
    full = decode.read_clip(video, 4, 2, SIZE, start=250, cache=store)
    with open(video, "r+b") as fh:
        fh.truncate(video.stat().st_size * 3 // 10)
    cut = decode.read_clip(video, 4, 2, SIZE, start=250, cache=store)
    np.testing.assert_array_equal(cut, decode.read_clip(video, 4, 2, SIZE, start=250))
    assert not np.array_equal(cut, full)  # frames from the ~75 that remain, not the cached 270
    every = list(decode.iter_frames(video, SIZE))
    np.testing.assert_array_equal(cut, np.stack(every[-7:][::2]))


def test_a_damaged_entry_is_decoded_again(tmp_path):
    store = FrameCache(tmp_path / "c").check()
    expected = decode.read_clip(VIDEOS / "tree.avi", 4, 2, SIZE, start=5, cache=store)
    [entry] = _entries(tmp_path / "c")
    with open(entry, "r+b") as fh:
        fh.truncate(entry.stat().st_size - 100)
    np.testing.assert_array_equal(decode.read_clip(VIDEOS / "tree.avi", 4, 2, SIZE, start=5, cache=store), expected)
    assert store.stats["fills"] == 2 and _entries(tmp_path / "c")[0].stat().st_size > entry.stat().st_size - 100


def test_an_entry_that_breaks_while_read_is_decoded_again(tmp_path, monkeypatch):
    store = FrameCache(tmp_path / "c").check()
    expected = decode.read_clip(VIDEOS / "tree.avi", 4, 2, SIZE, start=5, cache=store)

    def broken(self, want):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(cache.Entry, "fetch", broken)
    np.testing.assert_array_equal(decode.read_clip(VIDEOS / "tree.avi", 4, 2, SIZE, start=5, cache=store), expected)
    assert _entries(tmp_path / "c") == []  # dropped; the next read fills it again


def _warnings(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def test_a_cache_folder_that_cannot_be_written(tmp_path, videos, capsys):
    """A cache_dir below a regular file (the OS refuses to make it): one warning, samples as without."""
    (tmp_path / "file").write_text("x")
    plain = open_source(_data(videos), "train")
    source = open_source(_data(videos, cache=True, cache_dir=str(tmp_path / "file" / "cache")), "train")
    expected, got = _samples(plain), _samples(source)
    for a, b in zip(expected, got, strict=True):
        np.testing.assert_array_equal(a, b)
    lines = _warnings(capsys)
    assert len(lines) == 1 and "cannot write" in lines[0] and "continues without it" in lines[0]
    assert not source.cache.writable


def test_a_read_only_disk(tmp_path, videos, capsys, monkeypatch):
    """Writing fails with EROFS at the first entry (after the folder check passed): one warning, no more tries."""
    source = open_source(_data(videos, cache=True, cache_dir=str(tmp_path / "c")), "train")
    capsys.readouterr()
    real = cache.fsio.atomic_path

    def read_only(*args, **kw):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(cache.fsio, "atomic_path", read_only)
    got = _samples(source)
    monkeypatch.setattr(cache.fsio, "atomic_path", real)
    for a, b in zip(_samples(open_source(_data(videos), "train")), got, strict=True):
        np.testing.assert_array_equal(a, b)
    lines = _warnings(capsys)
    assert len(lines) == 1 and "Read-only file system" in lines[0]
    assert _entries(tmp_path / "c") == [] and source.cache.stats["fills"] == 0


def test_a_disk_that_fills_up_while_writing(tmp_path, capsys, monkeypatch):
    store = FrameCache(tmp_path / "c").check()
    capsys.readouterr()

    class Full:
        def __init__(self, path, mode):
            self.fh = open(path, mode)  # noqa: SIM115
            self.written = 0

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

        def seek(self, at):
            self.fh.seek(at)

        def write(self, data):
            self.written += len(data)
            if self.written > 100_000:
                raise OSError(errno.ENOSPC, "No space left on device")
            self.fh.write(data)

    def fake_open(path, mode="r", *args, **kw):
        return Full(path, mode) if mode == "wb" else open(path, mode, *args, **kw)  # noqa: SIM115

    monkeypatch.setattr(cache, "open", fake_open, raising=False)
    expected = decode.read_clip(VIDEOS / "Megamind.avi", 4, 2, SIZE, start=30)
    got = decode.read_clip(VIDEOS / "Megamind.avi", 4, 2, SIZE, start=30, cache=store)
    decode.read_clip(VIDEOS / "box.mp4", 4, 2, SIZE, cache=store)
    np.testing.assert_array_equal(got, expected)
    lines = _warnings(capsys)
    assert len(lines) == 1 and "disk full" in lines[0]
    assert store.full and _entries(tmp_path / "c") == [] and _leftovers(tmp_path / "c") == []


def test_a_disk_short_of_space_and_the_size_limit(tmp_path, capsys, monkeypatch):
    store = FrameCache(tmp_path / "c").check()
    capsys.readouterr()
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(cache.shutil, "disk_usage", lambda p: usage(10 << 30, 10 << 30, 300 << 20))
    decode.read_clip(VIDEOS / "tree.avi", 4, 2, SIZE, cache=store)
    decode.read_clip(VIDEOS / "Megamind.avi", 4, 2, SIZE, cache=store)
    lines = _warnings(capsys)
    assert len(lines) == 1 and "disk short" in lines[0] and _entries(tmp_path / "c") == []
    monkeypatch.undo()

    small = FrameCache(tmp_path / "small", limit_gb=1.5e-3).check()  # 1.6 MB: tree fits (68 x 3 KB), Megamind not
    decode.read_clip(VIDEOS / "tree.avi", 4, 2, SIZE, cache=small)
    decode.read_clip(VIDEOS / "box.mp4", 4, 2, (256, 256), cache=small)
    got = decode.read_clip(VIDEOS / "box.mp4", 4, 2, (256, 256), cache=small)
    np.testing.assert_array_equal(got, decode.read_clip(VIDEOS / "box.mp4", 4, 2, (256, 256)))
    lines = _warnings(capsys)
    assert len(lines) == 1 and "limit of 0.0015 GB" in lines[0]
    assert len(_entries(tmp_path / "small")) == 1


def test_threads_fill_and_read_one_cache_at_once(tmp_path):
    store = FrameCache(tmp_path / "c").check()
    jobs = [(name, seed) for seed in range(4) for name in NAMES] * 2

    def clip(job, with_cache=True):
        name, seed = job
        return decode.read_clip(VIDEOS / name, 5, 3, SIZE, start="random", rng=np.random.default_rng(seed),
                                cache=store if with_cache else None)

    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(clip, jobs))
    for job, g in zip(jobs, got, strict=True):
        np.testing.assert_array_equal(g, clip(job, with_cache=False))
    assert len(_entries(tmp_path / "c")) == len(NAMES) and _leftovers(tmp_path / "c") == []


READER = """
import hashlib, sys
import numpy as np
from vidcli.video import decode
from vidcli.video.cache import FrameCache
store = FrameCache(sys.argv[1]).check()
h = hashlib.sha256()
for seed in range(6):
    for name in sys.argv[2:]:
        clip = decode.read_clip(name, 5, 3, (32, 32), start="random", rng=np.random.default_rng(seed), cache=store)
        h.update(clip.tobytes())
print(h.hexdigest(), store.stats["fills"], store.stats["hits"])
"""


def test_two_processes_share_one_cache(tmp_path):
    """Two processes fill and read the same cache folder at the same time: both get exactly the uncached
    samples, each video is written whole once or twice (never half), nothing is left behind."""
    names = [str(VIDEOS / n) for n in NAMES]
    procs = [subprocess.Popen([sys.executable, "-c", READER, str(tmp_path / "c"), *names], cwd=REPO, env=env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    h = hashlib.sha256()
    for seed in range(6):
        for name in names:
            h.update(decode.read_clip(name, 5, 3, (32, 32), start="random", rng=np.random.default_rng(seed)).tobytes())
    results = [o[0].split() for o in outs]
    assert [r[0] for r in results] == [h.hexdigest()] * 2
    assert sum(int(r[2]) for r in results) > 0  # the cache was read, not only written
    assert len(_entries(tmp_path / "c")) == len(NAMES) and _leftovers(tmp_path / "c") == []
    store = FrameCache(tmp_path / "c")
    for name in names:
        path, st = decode.check_file(name)
        assert store.lookup(path, st, Fit("pad", (32, 32))) is not None
