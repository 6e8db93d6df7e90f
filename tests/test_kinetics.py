"""`vidcli data kinetics-frames` and the `frames` layout, on real clips renamed the Kinetics way."""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import typer
from conftest import VIDEOS
from typer.testing import CliRunner

from vidcli.cli.data_kinetics import register
from vidcli.datasets import frames, kinetics
from vidcli.datasets.frames import load_frame_clip, load_frames, read_frame_list, segment_indices
from vidcli.datasets.kinetics import extract_kinetics_frames, safe_class_name
from vidcli.errors import PARTIAL, VidcliError, fail

FOOTBALL = "passing American football (in game)"
CSV = (
    "label,youtube_id,time_start,time_end,split\n"
    f'"{FOOTBALL}",abc,1,11,train\n'
    "abseiling,def,2,12,train\n"
    "abseiling,bad,0,10,train\n"
    "archery,gone,5,15,train\n"
)


def _video(name: str) -> Path:
    path = VIDEOS / name
    assert path.is_file(), f"test data missing: {path}"
    return path


@pytest.fixture
def kin(tmp_path: Path) -> tuple[Path, Path]:
    """Two copies of tree.avi (68 decodable frames, header says 444), one nested and one named plainly
    `<youtube_id>.avi`, a truncated mp4, and a CSV row whose video is absent."""
    src = tmp_path / "videos"
    (src / "nested").mkdir(parents=True)
    shutil.copy(_video("tree.avi"), src / "abc_000001_000011.avi")
    shutil.copy(_video("tree.avi"), src / "nested" / "def.avi")
    (src / "bad_000000_000010.mp4").write_bytes(_video("box.mp4").read_bytes()[:6000])
    csv = tmp_path / "kinetics_train.csv"
    csv.write_text(CSV)
    return src, csv


def _run(src: Path, out: Path, csv: Path | None = None, **kw) -> dict:
    args = {"split": None, "csv": csv, "short_side": 64, "height": None, "quality": 90, "workers": 1, "shard": None}
    return extract_kinetics_frames(src, out, **{**args, **kw})


def _mtimes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def test_safe_class_name_follows_the_reference():
    assert safe_class_name(FOOTBALL) == "passing_American_football_in_game"
    assert safe_class_name("\"riding 'bike'\"") == "riding_bike"


def test_csv_run_writes_1_based_frames_lists_classes_and_missing(kin, tmp_path):
    src, csv = kin
    out = tmp_path / "out"
    summary = _run(src, out, csv)
    assert (summary["done"], summary["skipped"], summary["failed"], summary["absent"]) == (2, 0, 1, 1)

    folder = out / "train" / "abc_000001_000011"
    jpgs = sorted(p.name for p in folder.glob("*.jpg"))
    assert len(jpgs) == 68 and jpgs[0] == "img_00001.jpg" and jpgs[-1] == "img_00068.jpg"
    assert cv2.imread(str(folder / "img_00001.jpg")).shape == (64, 85, 3)  # 240x320 -> short side 64
    assert (out / "train" / "def_000002_000012" / "img_00068.jpg").is_file()  # plain <youtube_id>.avi matched

    assert (out / "classes.txt").read_text().split() == ["abseiling", "archery", "passing_American_football_in_game"]
    assert (out / "train_list.txt").read_text().splitlines() == [
        "train/abc_000001_000011 68 2",
        "train/def_000002_000012 68 0",
    ]
    missing = (out / "missing_train.txt").read_text().splitlines()
    assert [m.split()[0] for m in missing] == ["train/bad_000000_000010", "train/gone_000005_000015"]
    assert "not a readable video" in missing[0] and "not on disk" in missing[1]
    assert not list(out.rglob(".*partial-*"))


def test_fixed_height_mode(kin, tmp_path):
    src, csv = kin
    _run(src, tmp_path / "out", csv, short_side=None, height=48)
    assert cv2.imread(str(tmp_path / "out/train/abc_000001_000011/img_00001.jpg")).shape == (48, 64, 3)


def test_resume_skips_finished_and_redoes_half_written(kin, tmp_path):
    src, csv = kin
    out = tmp_path / "out"
    _run(src, out, csv)
    before = _mtimes(out / "train")
    again = _run(src, out, csv)
    assert (again["done"], again["skipped"]) == (0, 2)
    assert _mtimes(out / "train") == before

    half = out / "train" / "def_000002_000012"
    (half / frames.DONE_MARKER).unlink()
    (half / "img_00068.jpg").unlink()
    (half / "junk.tmp").write_bytes(b"x")
    third = _run(src, out, csv)
    assert (third["done"], third["skipped"]) == (1, 1)
    assert not (half / "junk.tmp").exists() and (half / "img_00068.jpg").is_file()
    assert frames.read_done(half) == 68
    assert _mtimes(out / "train/abc_000001_000011") == {
        k[len("abc_000001_000011/"):]: v for k, v in before.items() if k.startswith("abc_")
    }


def test_shards_partition_the_set_and_the_last_one_merges(kin, tmp_path):
    src, csv = kin
    shutil.copy(_video("tree.avi"), src / "ghi_000003_000013.avi")
    csv.write_text(CSV + "archery,ghi,3,13,train\n")
    whole = tmp_path / "whole"
    _run(src, whole, csv)
    out = tmp_path / "sharded"
    first = _run(src, out, csv, shard=(0, 2))
    assert first["splits"]["train"]["merged"] is None and not (out / "train_list.txt").exists()
    second = _run(src, out, csv, shard=(1, 2))
    assert second["splits"]["train"]["merged"] == str(out / "train_list.txt")

    shard_ids = [
        {line.split()[0] for line in (out / f"{stem}.shard{i}of2.txt").read_text().splitlines()}
        for i in range(2)
        for stem in ("train_list", "missing_train")
    ]
    assert all(not (a & b) for k, a in enumerate(shard_ids) for b in shard_ids[k + 1 :])
    assert set().union(*shard_ids) == {f"train/{v}" for v in ("abc_000001_000011", "bad_000000_000010",
                                                               "def_000002_000012", "gone_000005_000015",
                                                               "ghi_000003_000013")}
    assert (out / "train_list.txt").read_text() == (whole / "train_list.txt").read_text()
    assert (out / "missing_train.txt").read_text() == (whole / "missing_train.txt").read_text()

    (out / "train_list.txt").unlink()
    result = CliRunner().invoke(_app(), ["kinetics-frames", "--out", str(out), "--merge", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["merged"]["train"]["videos"] == 3
    assert (out / "train_list.txt").read_text() == (whole / "train_list.txt").read_text()
    ignored = CliRunner().invoke(_app(), ["kinetics-frames", "--out", str(out), "--merge", "--quality", "50",
                                          "--shard", "0/2"])
    assert "--quality, --shard: not used with --merge" in str(ignored.exception)  # exit 2 from the main app


def test_merge_names_unfinished_shards(tmp_path):
    (tmp_path / "train_list.shard1of3.txt").write_text("")
    with pytest.raises(VidcliError, match="shards 0, 2 of 3 not finished"):
        kinetics.merge_shards(tmp_path, "train")


def _app() -> typer.Typer:
    app = typer.Typer()
    app.callback()(lambda: None)
    register(app)
    return app


def test_cli_two_worker_processes_and_json_stdout_exit_partial(kin, tmp_path):
    """Some videos failed, the others were extracted: every failure is an error line, exit code 3."""
    src, csv = kin
    (src / "worse_000000_000010.avi").write_bytes(b"RIFF" + bytes(500))
    csv.write_text(CSV + "abseiling,worse,0,10,train\n")
    out = tmp_path / "out"
    args = ["kinetics-frames", str(src), "--out", str(out), "--split", "train", "--csv", str(csv),
            "--short-side", "64", "--workers", "2", "--json"]
    result = CliRunner().invoke(_app(), args)
    assert result.exit_code == PARTIAL, result.output
    summary = json.loads(result.stdout)  # stdout holds the JSON and nothing else
    assert (summary["done"], summary["failed"], summary["absent"]) == (2, 2, 1)
    assert summary["splits"]["train"]["list"] == str(out / "train_list.txt")
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 2 and "bad_000000_000010" in errors[0] + errors[1] and "worse_" in errors[0] + errors[1]
    assert len((out / "train_list.txt").read_text().splitlines()) == 2
    quiet = CliRunner().invoke(_app(), [*args, "--quiet"])  # a rerun: finished videos skipped, failures again
    assert quiet.exit_code == PARTIAL and json.loads(quiet.stdout)["skipped"] == 2
    shown = [line for line in quiet.stderr.splitlines() if not line.startswith("warning: ")]  # warnings stay
    assert [line.startswith("error: ") for line in shown] == [True, True]


def test_cli_all_good_exits_0_and_quiet_is_silent(tmp_path):
    src = tmp_path / "mine" / "archery"
    src.mkdir(parents=True)
    shutil.copy(_video("tree.avi"), src / "a.avi")
    result = CliRunner().invoke(_app(), ["kinetics-frames", str(src.parent), "--out", str(tmp_path / "o"), "-q"])
    assert result.exit_code == 0 and result.stderr == "" and result.stdout == ""


@pytest.mark.parametrize("raw", [True, False])
def test_full_disk_stops_the_run_with_one_error(kin, tmp_path, monkeypatch, raw):
    """An output that cannot be written fails every video alike: stop at the first with exit 1."""
    src, csv = kin

    def full(video, folder, **settings):
        if raw:
            raise OSError(errno.ENOSPC, "No space left on device", str(folder))
        raise fail(f"cannot write {folder}/img_00001.jpg: No space left on device")

    monkeypatch.setattr(frames, "write_frame_folder", full)
    with pytest.raises(VidcliError, match="No space left on device.*rerun") as info:
        _run(src, tmp_path / "out", csv)
    assert info.value.exit_code == 1 and not (tmp_path / "out" / "train_list.txt").exists()
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(VidcliError, match="cannot") as info:
        _run(src, blocker / "out", csv)
    assert info.value.exit_code == 1


def test_help_ends_with_examples():
    text = CliRunner().invoke(_app(), ["kinetics-frames", "--help"]).stdout
    assert text[text.rindex("Examples"):].count("vidcli data kinetics-frames") >= 3 and "--quiet" in text


def test_cli_all_failed_exits_1_and_bad_options_exit_2(kin, tmp_path):
    src, _ = kin
    only_bad = tmp_path / "bad_only"
    only_bad.mkdir()
    shutil.move(src / "bad_000000_000010.mp4", only_bad / "bad_000000_000010.mp4")
    csv = tmp_path / "one.csv"
    csv.write_text("label,youtube_id,time_start,time_end,split\nabseiling,bad,0,10,train\n")
    runner = CliRunner()
    out = tmp_path / "out"
    result = runner.invoke(_app(), ["kinetics-frames", str(only_bad), "--out", str(out), "--csv", str(csv)])
    assert isinstance(result.exception, VidcliError) and result.exception.exit_code == 1
    assert "no video could be extracted" in str(result.exception)
    assert "bad_000000_000010" in (out / "missing_train.txt").read_text()

    both = ["kinetics-frames", str(src), "--csv", str(csv), "--short-side", "64", "--height", "64"]
    result = runner.invoke(_app(), both)
    assert isinstance(result.exception, VidcliError) and result.exception.exit_code == 2
    result = runner.invoke(_app(), ["kinetics-frames", str(src), "--shard", "2/2"])
    assert isinstance(result.exception, VidcliError) and "--shard" in str(result.exception)


def test_folder_mode_does_each_split_with_shared_classes(tmp_path):
    src = tmp_path / "mine"
    for split, cls in (("train", "tai chi (basic)"), ("train", "archery"), ("val", "archery")):
        (src / split / cls).mkdir(parents=True, exist_ok=True)
        shutil.copy(_video("tree.avi"), src / split / cls / "clip 1.avi")
    out = tmp_path / "out"
    summary = _run(src, out)
    assert set(summary["splits"]) == {"train", "val"}
    assert (out / "classes.txt").read_text().split() == ["archery", "tai_chi_basic"]
    assert (out / "train_list.txt").read_text().splitlines() == [
        "train/archery/clip_1 68 0",
        "train/tai_chi_basic/clip_1 68 1",
    ]
    assert (out / "val_list.txt").read_text().splitlines() == ["val/archery/clip_1 68 0"]
    assert (out / "val" / "archery" / "clip_1" / "img_00001.jpg").is_file()

    only_val = _run(src, tmp_path / "only_val", split="val")
    assert list(only_val["splits"]) == ["val"] and only_val["done"] == 1

    clips = read_frame_list(out / "train_list.txt")
    assert clips.classes == ["archery", "tai_chi_basic"] and clips.split == "train"
    assert clips.paths[1] == out / "train" / "tai_chi_basic" / "clip_1"
    assert clips.labels.tolist() == [0, 1] and clips.extra["num_frames"].tolist() == [68, 68]


def test_classes_file_is_reused_and_a_new_class_is_refused(kin, tmp_path):
    src, csv = kin
    out = tmp_path / "out"
    _run(src, out, csv)
    classes = (out / "classes.txt").read_text()
    val_csv = tmp_path / "val.csv"
    val_csv.write_text(f'label,youtube_id,time_start,time_end,split\n"{FOOTBALL}",abc,1,11,validate\n')
    summary = _run(src, out, val_csv)  # the split comes from the CSV's split column
    assert (out / "classes.txt").read_text() == classes
    assert (out / "val_list.txt").read_text() == "val/abc_000001_000011 68 2\n"
    assert summary["num_classes"] == 3
    val_csv.write_text("label,youtube_id,time_start,time_end\nbowling,abc,1,11\n")
    with pytest.raises(VidcliError, match="'bowling' is not in the existing classes"):
        _run(src, out, val_csv, split="val")
    with pytest.raises(VidcliError, match="extracted with"):
        _run(src, out, csv, short_side=32)


def test_bad_csv_is_a_user_error(kin, tmp_path):
    src, _ = kin
    bad = tmp_path / "bad.csv"
    bad.write_text("youtube_id,time_start\nabc,1\n")
    with pytest.raises(VidcliError, match="missing column label"):
        _run(src, tmp_path / "out", bad, split="train")
    bad.write_text("label,youtube_id,time_start,time_end\nabseiling,abc,one,11\n")
    with pytest.raises(VidcliError, match=r"bad.csv:2: time_start"):
        _run(src, tmp_path / "out", bad, split="train")


# ------------------------------------------------------------ sampling, reference values by hand


def test_segment_indices_val_test_and_twice_match_the_reference():
    assert segment_indices(100, 8, "val", None).tolist() == [6, 18, 31, 43, 56, 68, 81, 93]
    assert segment_indices(100, 8, "test", None).tolist() == [6, 18, 31, 43, 56, 68, 81, 93]
    assert segment_indices(21, 4, "val", None, new_length=5).tolist() == [2, 6, 10, 14]
    # too short: val falls back to frame 0, test still spreads (the reference does the same)
    assert segment_indices(5, 8, "val", None).tolist() == [0] * 8
    assert segment_indices(5, 8, "test", None).tolist() == [0, 0, 1, 2, 2, 3, 4, 4]
    assert segment_indices(8, 8, "val", None).tolist() == [0] * 8
    assert segment_indices(8, 8, "test", None).tolist() == list(range(8))
    assert segment_indices(100, 4, "twice", None).tolist() == [12, 37, 62, 87, 0, 25, 50, 75]


def test_segment_indices_train_random_offsets_inside_segments():
    got = segment_indices(100, 8, "train", np.random.default_rng(3))
    expect = np.arange(8) * 12 + np.random.default_rng(3).integers(0, 12, size=8)
    assert got.tolist() == expect.tolist()
    draws = np.stack([segment_indices(100, 8, "train", np.random.default_rng(s)) for s in range(50)])
    assert (draws >= np.arange(8) * 12).all() and (draws < np.arange(8) * 12 + 12).all()
    assert len({tuple(d) for d in draws}) > 1
    assert segment_indices(10, 8, "train", None).tolist() == list(range(8))
    assert segment_indices(6, 8, "train", None).tolist() == [0] * 8
    short = segment_indices(10, 8, "train", np.random.default_rng(0), new_length=4)
    assert short.tolist() == sorted(short.tolist()) and short.min() >= 0 and short.max() <= 6


def test_segment_indices_dense_modes():
    assert segment_indices(40, 8, "dense", None).tolist() == [0, 8, 16, 24, 32, 0, 8, 16]
    assert segment_indices(65, 8, "dense", np.random.default_rng(1)).tolist() == list(range(0, 64, 8))
    got = segment_indices(200, 8, "dense", np.random.default_rng(5))
    start = int(np.random.default_rng(5).integers(0, 136))
    assert got.tolist() == [start + 8 * i for i in range(8)]
    clips = segment_indices(100, 8, "dense_test", None).reshape(10, 8)
    assert clips[:, 0].tolist() == [0, 4, 8, 12, 16, 20, 24, 28, 32, 36]
    assert clips[-1].tolist() == list(range(36, 100, 8))
    with pytest.raises(VidcliError, match="unknown sampling mode"):
        segment_indices(10, 3, "middle", None)


# ------------------------------------------------------------ reading frame folders


def test_read_frame_list_errors_name_file_and_line(tmp_path):
    lst = tmp_path / "val_list.txt"
    lst.write_text("val/a 10 1\n\nval/b 12\n")
    with pytest.raises(VidcliError, match=r"val_list.txt:3: expected"):
        read_frame_list(lst)
    lst.write_text("val/a ten 1\n")
    with pytest.raises(VidcliError, match=r"val_list.txt:1: frame count and label must be integers"):
        read_frame_list(lst)
    lst.write_text("val/a 0 1\n")
    with pytest.raises(VidcliError, match=r"val_list.txt:1: frame count must be >= 1"):
        read_frame_list(lst)
    with pytest.raises(VidcliError, match="list file not found"):
        read_frame_list(tmp_path / "nope.txt")

    lst.write_text("val/a 10 1\nval/my clip 12 0\n")
    clips = read_frame_list(lst, root=tmp_path / "data")
    assert clips.classes == ["0", "1"] and clips.paths[1] == tmp_path / "data" / "val" / "my clip"
    (tmp_path / "classes.txt").write_text("only\n")
    with pytest.raises(VidcliError, match=r"val_list.txt:1: label 1 out of range \(1 classes\)"):
        read_frame_list(lst)


def test_load_frames_and_clips_from_a_folder(tmp_path):
    folder = tmp_path / "clip"
    n, made = frames.write_frame_folder(_video("tree.avi"), folder, short_side=64, height=None, quality=90)
    assert (n, made) == (68, True)
    assert frames.write_frame_folder(_video("tree.avi"), folder, short_side=64, height=None, quality=90) == (68, False)

    got = load_frames(folder, np.array([0, 67, 0]), None)
    assert got.shape == (3, 64, 85, 3) and got.dtype == np.uint8
    first = cv2.cvtColor(cv2.imread(str(folder / "img_00001.jpg")), cv2.COLOR_BGR2RGB)
    assert np.array_equal(got[0], first) and np.array_equal(got[2], first)
    assert load_frames(folder, np.array([5]), (32, 32)).shape == (1, 32, 32, 3)

    clip = load_frame_clip(folder, n, 8, 12, (32, 32), "center")
    assert clip.shape == (8, 32, 32, 3)
    assert np.array_equal(clip[-1], clip[-2])  # positions 72 and 84 repeat frame 67
    assert np.array_equal(clip[-1], load_frames(folder, np.array([67]), (32, 32))[0])
    assert np.array_equal(load_frame_clip(folder, n, 4, 2, None, 0), load_frames(folder, np.array([0, 2, 4, 6]), None))

    with pytest.raises(VidcliError, match=r"img_00069.jpg: frame missing"):
        load_frames(folder, np.array([68]), None)
    (folder / "img_00002.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(VidcliError, match=r"img_00002.jpg: frame not a readable JPEG"):
        load_frames(folder, np.array([1]), None)
