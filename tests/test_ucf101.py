"""`vidcli data fetch-ucf101` against a Range-capable server on 127.0.0.1 serving a UCF101-shaped zip."""

from __future__ import annotations

import io
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import httpserver
import pytest
import typer
from conftest import VIDEOS
from httpserver import FileServer
from typer.testing import CliRunner

from vidcli import httprange
from vidcli.cli import data_ucf101
from vidcli.cli.data_ucf101 import register
from vidcli.datasets import ucf101
from vidcli.datasets.ucf101 import fetch_ucf101
from vidcli.errors import VidcliError

REPO = Path(__file__).resolve().parents[1]
ZIP_PATH = "/UCF101_videos.zip"
# class -> clips in each group (g01, g02, ...)
GROUPS = {
    "ApplyEyeMakeup": [3, 4, 2, 5, 3, 4, 3],
    "Archery": [4, 4, 3, 5, 2, 4],
    "BabyCrawling": [5, 3, 4, 4, 3, 4],
    "Basketball": [2, 3, 4, 5, 4, 4],
    "YoYo": [4, 4, 4],
}
REAL = {"v_ApplyEyeMakeup_g01_c01.avi": "Megamind.avi", "v_ApplyEyeMakeup_g01_c02.avi": "tree.avi",
        "v_ApplyEyeMakeup_g02_c01.avi": "box.mp4", "v_Archery_g03_c02.avi": "Megamind.avi"}
SPLIT = {"train": 6, "val": 3, "test": 3}
TOTAL3 = 3 * sum(SPLIT.values())


def _payload(name: str) -> bytes:
    if name in REAL:
        return (VIDEOS / REAL[name]).read_bytes()
    rng = random.Random(name)
    noise = rng.randbytes(rng.randint(300, 3000))
    return b"RIFF" + noise + name.encode() * rng.randint(5, 200)


def _zip(entries: list[tuple[str, bytes, int]]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data, method in entries:
            info = zipfile.ZipInfo(name, date_time=(2012, 9, 1, 12, 0, 0))
            info.compress_type = method
            zf.writestr(info, data)
    return buffer.getvalue()


def _ucf_entries() -> list[tuple[str, bytes, int]]:
    entries = [("UCF101/", b"", zipfile.ZIP_STORED)]
    for cls, sizes in GROUPS.items():
        for g, n in enumerate(sizes, 1):
            for c in range(1, n + 1):
                name = f"v_{cls}_g{g:02d}_c{c:02d}.avi"
                method = zipfile.ZIP_STORED if (g + c) % 2 else zipfile.ZIP_DEFLATED
                entries.append((f"UCF101/{name}", _payload(name), method))
    return entries


@pytest.fixture(scope="module")
def ucf_zip() -> bytes:
    return _zip(_ucf_entries())


@pytest.fixture
def server(ucf_zip):
    with FileServer({ZIP_PATH: ucf_zip}) as srv:
        srv.chunk = 32768
        yield srv


@pytest.fixture(autouse=True)
def _fast(monkeypatch):
    monkeypatch.setattr(httprange, "BACKOFF", 0)
    # headers and body go out as two writes; with Nagle on, each keep-alive request waits ~40 ms for an ACK
    monkeypatch.setattr(httpserver._Handler, "disable_nagle_algorithm", True, raising=False)
    monkeypatch.delenv(ucf101.URL_ENV, raising=False)


def _fetch(out: Path, url: str, **kw) -> dict:
    args = dict(classes=3, class_names=None, split=SPLIT, split_by="group", seed=0, workers=3)
    return fetch_ucf101(out, url=url, **{**args, **kw})


def _cli(*args: str):
    app = typer.Typer()

    @app.callback()
    def _root() -> None:
        """Keeps subcommand names."""

    register(app)
    return CliRunner().invoke(app, list(args))


def _clips(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*.avi")}


def _partials(out: Path) -> list[Path]:
    return [p for p in out.rglob("*") if "partial" in p.name]


def _member_gets(server: FileServer, zip_bytes: bytes) -> int:
    """GETs that read a member (the directory read is the one ranged GET reaching the end of the zip)."""
    return sum(1 for r in server.gets() if not (r.range or "").endswith(f"-{len(zip_bytes) - 1}"))


def test_group_split_via_cli_fetches_exact_members_and_manifest(server, ucf_zip, tmp_path):
    out = tmp_path / "ucf"
    result = _cli("fetch-ucf101", "--classes", "3", "--split", "train=6,val=3,test=3", "--out", str(out),
                  "--url", server.url(ZIP_PATH), "--workers", "3", "--json")
    assert result.exit_code == 0, result.output
    assert _member_gets(server, ucf_zip) == TOTAL3
    summary = json.loads(result.stdout)
    assert summary["classes"] == ["ApplyEyeMakeup", "Archery", "BabyCrawling"]
    assert summary["fetched"] == TOTAL3 and summary["kept"] == 0 and summary["clips"] == {"train": 18, "val": 9,
                                                                                          "test": 9}
    zf = zipfile.ZipFile(io.BytesIO(ucf_zip))
    clips = _clips(out)
    assert len(clips) == TOTAL3
    splits_of_group: dict[tuple[str, str], set[str]] = {}
    for rel, data in clips.items():
        split, cls, name = rel.split("/")
        assert data == zf.read(f"UCF101/{name}")
        splits_of_group.setdefault((cls, name.split("_")[2]), set()).add(split)
    assert all(len(s) == 1 for s in splits_of_group.values()), splits_of_group
    for split, n in SPLIT.items():
        for cls in summary["classes"]:
            assert len(list((out / split / cls).glob("*.avi"))) == n
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["source"]["url"] == server.url(ZIP_PATH) and manifest["source"]["zip_size"] == len(ucf_zip)
    assert manifest["seed"] == 0 and manifest["split_by"] == "group" and manifest["split"] == SPLIT
    assert sorted(m["path"] for m in manifest["members"]) == sorted(clips)
    for m in manifest["members"]:
        info = zf.getinfo(m["name"])
        assert m["crc32"] == f"{info.CRC:08x}" and m["size"] == info.file_size
        assert m["path"].startswith(m["split"] + "/" + m["class"] + "/")
    assert (out / "val" / "ApplyEyeMakeup").is_dir() and not _partials(out)


def test_real_clips_are_byte_identical(server, tmp_path):
    out = tmp_path / "ucf"
    _fetch(out, server.url(ZIP_PATH), classes=None, class_names=["applyeyemakeup"],
           split={"train": 17, "val": 3, "test": 4}, split_by="clip")
    found = {p.name: p for p in out.rglob("*.avi")}
    for name, source in REAL.items():
        if name in found:
            assert found[name].read_bytes() == (VIDEOS / source).read_bytes()
    assert {"v_ApplyEyeMakeup_g01_c01.avi", "v_ApplyEyeMakeup_g02_c01.avi"} <= set(found)


def test_clip_split_is_seeded_and_may_cross_groups(server, tmp_path):
    url = server.url(ZIP_PATH)
    a = _fetch(tmp_path / "a", url, split_by="clip", seed=1)
    _fetch(tmp_path / "b", url, split_by="clip", seed=1)
    c = _fetch(tmp_path / "c", url, split_by="clip", seed=2)
    assert a["clips"] == {"train": 18, "val": 9, "test": 9}
    assert set(_clips(tmp_path / "a")) == set(_clips(tmp_path / "b")) != set(_clips(tmp_path / "c"))
    assert c["fetched"] == TOTAL3
    splits_of_group: dict[tuple[str, str], set[str]] = {}
    for rel in _clips(tmp_path / "a"):
        split, cls, name = rel.split("/")
        splits_of_group.setdefault((cls, name.split("_")[2]), set()).add(split)
    assert any(len(s) > 1 for s in splits_of_group.values())


def test_rerun_downloads_nothing_and_repairs_damaged_clips(server, ucf_zip, tmp_path):
    out = tmp_path / "ucf"
    _fetch(out, server.url(ZIP_PATH))
    before, manifest = _clips(out), (out / "manifest.json").read_bytes()
    server.requests.clear()
    again = _fetch(out, server.url(ZIP_PATH))
    assert again["fetched"] == 0 and again["kept"] == TOTAL3
    assert _member_gets(server, ucf_zip) == 0 and len(server.gets()) == 1
    assert (out / "manifest.json").read_bytes() == manifest
    damaged, missing = sorted(out.rglob("*.avi"))[:2]
    damaged.write_bytes(b"\0" + damaged.read_bytes()[1:])
    missing.unlink()
    server.requests.clear()
    fixed = _fetch(out, server.url(ZIP_PATH))
    assert fixed["fetched"] == 2 and _member_gets(server, ucf_zip) == 2
    assert _clips(out) == before


def test_interrupted_fetch_leaves_no_partials_and_rerun_completes(server, tmp_path, monkeypatch):
    out = tmp_path / "ucf"
    original, calls = ucf101._download_member, []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) > 5:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(ucf101, "_download_member", flaky)
    with pytest.raises(KeyboardInterrupt):
        _fetch(out, server.url(ZIP_PATH), workers=2)
    assert 1 <= len(_clips(out)) <= 5 and not _partials(out) and not (out / "manifest.json").exists()
    monkeypatch.setattr(ucf101, "_download_member", original)
    done = _fetch(out, server.url(ZIP_PATH), workers=2)
    assert done["kept"] == TOTAL3 - done["fetched"] >= 1
    reference = tmp_path / "ref"
    _fetch(reference, server.url(ZIP_PATH))
    assert _clips(out) == _clips(reference) and not _partials(out)


def test_killed_process_rerun_finishes_with_identical_files(server, tmp_path):
    out = tmp_path / "ucf"
    server.stall = 0.1
    script = (
        "import sys; from pathlib import Path; from vidcli.datasets.ucf101 import fetch_ucf101; "
        "fetch_ucf101(Path(sys.argv[1]), url=sys.argv[2], classes=3, class_names=None, "
        "split={'train': 6, 'val': 3, 'test': 3}, split_by='group', seed=0, workers=1)"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", script, str(out), server.url(ZIP_PATH)], env=env, cwd=REPO)
    deadline = time.monotonic() + 60
    while len(list(out.rglob("*.avi"))) < 3 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 3 <= len(_clips(out)) < TOTAL3 and not (out / "manifest.json").exists()
    server.stall = 0
    done = _fetch(out, server.url(ZIP_PATH))
    assert done["fetched"] + done["kept"] == TOTAL3 and done["kept"] >= 3
    _fetch(tmp_path / "ref", server.url(ZIP_PATH))
    assert _clips(out) == _clips(tmp_path / "ref") and not _partials(out)


def test_stale_partial_from_a_killed_run_is_swept(server, tmp_path):
    out = tmp_path / "ucf"
    stale = out / "train" / "Archery" / ".v_Archery_g01_c01.avi.partial-abc123"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"half")
    _fetch(out, server.url(ZIP_PATH))
    assert not stale.exists() and not _partials(out)


def test_dropped_connections_are_retried(server, ucf_zip, tmp_path):
    server.drop_after, server.drops = 1000, 3
    _fetch(tmp_path / "ucf", server.url(ZIP_PATH))
    zf = zipfile.ZipFile(io.BytesIO(ucf_zip))
    assert all(data == zf.read(f"UCF101/{rel.split('/')[-1]}") for rel, data in _clips(tmp_path / "ucf").items())
    assert server.drops == 0


def test_connection_dropping_for_good_fails_cleanly(server, tmp_path, monkeypatch):
    original = ucf101.read_directory

    def then_break(*args, **kwargs):
        directory = original(*args, **kwargs)
        server.drop_after, server.drops = 200, None
        return directory

    monkeypatch.setattr(ucf101, "read_directory", then_break)
    out = tmp_path / "ucf"
    with pytest.raises(VidcliError, match=r"fetching UCF101/v_\w+\.avi failed after 4 tries") as info:
        _fetch(out, server.url(ZIP_PATH))
    assert info.value.exit_code == 1
    assert not _partials(out) and not (out / "manifest.json").exists()


def _data_offset(zip_bytes: bytes, name: str) -> int:
    info = zipfile.ZipFile(io.BytesIO(zip_bytes)).getinfo(name)
    start = info.header_offset
    name_len, extra_len = int.from_bytes(zip_bytes[start + 26 : start + 28], "little"), int.from_bytes(
        zip_bytes[start + 28 : start + 30], "little"
    )
    return start + 30 + name_len + extra_len


@pytest.mark.parametrize("name", ["UCF101/v_YoYo_g01_c02.avi", "UCF101/v_YoYo_g01_c01.avi"])
def test_corrupt_member_is_an_error_and_never_lands(ucf_zip, tmp_path, name):
    info = zipfile.ZipFile(io.BytesIO(ucf_zip)).getinfo(name)
    assert info.compress_type == (zipfile.ZIP_DEFLATED if name.endswith("c01.avi") else zipfile.ZIP_STORED)
    at = _data_offset(ucf_zip, name) + info.compress_size // 2
    bad = ucf_zip[:at] + bytes([ucf_zip[at] ^ 0xFF]) + ucf_zip[at + 1 :]
    out = tmp_path / "ucf"
    with FileServer({ZIP_PATH: bad}) as srv, pytest.raises(VidcliError, match=name.split("/")[1]) as err:
        _fetch(out, srv.url(ZIP_PATH), classes=None, class_names=["YoYo"], split={"train": 12})
    assert "not kept" in str(err.value) and err.value.exit_code == 1
    assert not list(out.rglob(name.split("/")[1])) and not _partials(out)
    assert not (out / "manifest.json").exists()


def test_server_without_range_support_is_a_clear_error(ucf_zip, tmp_path, monkeypatch):
    with FileServer({ZIP_PATH: ucf_zip}, ranges=False) as srv, pytest.raises(VidcliError, match="Range") as err:
        _fetch(tmp_path / "ucf", srv.url(ZIP_PATH))
    assert "\n" not in str(err.value) and not (tmp_path / "ucf").exists()
    # a server that advertises ranges but answers the member requests with the whole zip (200)
    original = ucf101.read_directory
    with FileServer({ZIP_PATH: ucf_zip}) as srv:

        def then_ignore_ranges(*args, **kwargs):
            directory = original(*args, **kwargs)
            srv.ranges = False
            return directory

        monkeypatch.setattr(ucf101, "read_directory", then_ignore_ranges)
        with pytest.raises(VidcliError, match="ignored an HTTP Range request"):
            _fetch(tmp_path / "ucf", srv.url(ZIP_PATH))
    assert not list((tmp_path / "ucf").rglob("*.avi")) and not _partials(tmp_path / "ucf")


def test_damaged_central_directory_is_an_error(ucf_zip, tmp_path):
    at = ucf_zip.rindex(b"PK\x01\x02")
    damaged = ucf_zip[:at] + b"XX" + ucf_zip[at + 2 :]
    with FileServer({ZIP_PATH: damaged}) as srv, pytest.raises(VidcliError, match="damaged zip"):
        _fetch(tmp_path / "ucf", srv.url(ZIP_PATH))
    assert not (tmp_path / "ucf").exists()


def test_server_errors_are_clear_one_liners(server, tmp_path):
    with pytest.raises(VidcliError, match=r"HTTP 404.*--url") as err:
        _fetch(tmp_path / "a", server.url("/missing.zip"))
    assert err.value.exit_code == 2
    server.status[ZIP_PATH] = 500
    with pytest.raises(VidcliError, match="HTTP 500") as err:
        _fetch(tmp_path / "b", server.url(ZIP_PATH))
    assert err.value.exit_code == 1
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(VidcliError, match="(?i)refused") as err:
        _fetch(tmp_path / "c", f"http://127.0.0.1:{port}/UCF101_videos.zip")
    assert "\n" not in str(err.value) and not any((tmp_path / d).exists() for d in "abc")


def test_unknown_class_names_near_misses(server, tmp_path):
    result = _cli("fetch-ucf101", "--class-names", "Archey,YoYo", "--out", str(tmp_path / "o"),
                  "--url", server.url(ZIP_PATH))
    assert isinstance(result.exception, VidcliError) and result.exception.exit_code == 2
    assert "unknown UCF101 class 'Archey'" in str(result.exception) and "Archery" in str(result.exception)
    assert not (tmp_path / "o").exists()


def test_too_many_clips_asked_is_refused_before_writing(server, tmp_path):
    with pytest.raises(VidcliError, match="asks for 30 clips but it has only 24"):
        _fetch(tmp_path / "o", server.url(ZIP_PATH), split={"train": 30})
    # 12 clips in three groups of 4: val needs a second group, so test finds none left
    with pytest.raises(VidcliError, match="run out.*--split-by clip"):
        _fetch(tmp_path / "o", server.url(ZIP_PATH), classes=None, class_names=["YoYo"],
               split={"train": 4, "val": 5, "test": 3})
    assert not (tmp_path / "o").exists()
    done = _fetch(tmp_path / "o", server.url(ZIP_PATH), classes=None, class_names=["YoYo"],
                  split={"train": 4, "val": 5, "test": 3}, split_by="clip")
    assert done["clips"] == {"train": 4, "val": 5, "test": 3}


@pytest.mark.parametrize("evil", ["../evil.avi", "/abs/v_YoYo_g09_c01.avi", "UCF101/../../v_YoYo_g09_c01.avi"])
def test_unsafe_member_names_are_refused(tmp_path, evil):
    entries = _ucf_entries()[:5] + [(evil, b"gotcha", zipfile.ZIP_STORED)]
    with FileServer({ZIP_PATH: _zip(entries)}) as srv, pytest.raises(VidcliError, match="unsafe path"):
        _fetch(tmp_path / "o", srv.url(ZIP_PATH), classes=1, split={"train": 1})
    assert not (tmp_path / "o").exists() and not (tmp_path / "evil.avi").exists()


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (_zip([("docs/readme.txt", b"hello", zipfile.ZIP_DEFLATED), ("clips/a.avi", b"x", 0)]), "not the UCF101 zip"),
        (random.Random(0).randbytes(5000), "not a zip file"),
    ],
)
def test_zip_that_is_not_ucf101_shaped(tmp_path, payload, message):
    with FileServer({ZIP_PATH: payload}) as srv, pytest.raises(VidcliError, match=message):
        _fetch(tmp_path / "o", srv.url(ZIP_PATH))
    assert not (tmp_path / "o").exists()


def test_zip64_directory_is_read(tmp_path, monkeypatch):
    monkeypatch.setattr(zipfile, "ZIP64_LIMIT", 2000)
    payload = _zip(_ucf_entries())
    monkeypatch.undo()
    assert b"PK\x06\x07" in payload[-200:]
    monkeypatch.setattr(httprange, "BACKOFF", 0)
    with FileServer({ZIP_PATH: payload}) as srv:
        _fetch(tmp_path / "o", srv.url(ZIP_PATH), classes=None, class_names=["Basketball", "archery"])
    zf = zipfile.ZipFile(io.BytesIO(payload))
    clips = _clips(tmp_path / "o")
    assert len(clips) == 2 * sum(SPLIT.values())
    assert all(data == zf.read(f"UCF101/{rel.split('/')[-1]}") for rel, data in clips.items())


def test_new_seed_moves_clips_instead_of_fetching_and_leaves_no_strays(server, ucf_zip, tmp_path):
    out = tmp_path / "ucf"
    _fetch(out, server.url(ZIP_PATH), seed=0)
    server.requests.clear()
    summary = _fetch(out, server.url(ZIP_PATH), seed=5)
    assert summary["moved"] > 0 and summary["fetched"] + summary["moved"] + summary["kept"] == TOTAL3
    assert _member_gets(server, ucf_zip) == summary["fetched"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert sorted(m["path"] for m in manifest["members"]) == sorted(_clips(out))
    _fetch(tmp_path / "ref", server.url(ZIP_PATH), seed=5)
    assert _clips(out) == _clips(tmp_path / "ref")


def test_clips_outside_the_selection_need_force(server, tmp_path):
    out = tmp_path / "ucf"
    _fetch(out, server.url(ZIP_PATH), classes=3)
    with pytest.raises(VidcliError, match="--force"):
        _fetch(out, server.url(ZIP_PATH), classes=2)
    assert (out / "manifest.json").exists()
    summary = _fetch(out, server.url(ZIP_PATH), classes=2, force=True)
    assert summary["removed"] == sum(SPLIT.values()) and summary["fetched"] == 0
    assert not any("BabyCrawling" in rel for rel in _clips(out)) and not (out / "train" / "BabyCrawling").exists()


def test_cli_env_url_text_output_and_bad_options(server, tmp_path, monkeypatch):
    monkeypatch.setenv(ucf101.URL_ENV, server.url(ZIP_PATH))
    result = _cli("fetch-ucf101", "--class-names", "YoYo", "--split", "train=2,test=1", "--out", str(tmp_path / "o"))
    assert result.exit_code == 0 and result.stdout == "" and "1 class(es), 2 train, 1 test clips" in result.stderr
    assert json.loads((tmp_path / "o" / "manifest.json").read_text())["source"]["url"] == server.url(ZIP_PATH)
    for args, message in [
        (["--split", "train=x"], "NAME=COUNT"),
        (["--split", "train=1,train=2"], "given twice"),
        (["--classes", "2", "--class-names", "YoYo"], "not both"),
        (["--classes", "9"], "only 5 classes"),
        (["--url", "ftp://example.org/x.zip"], "http"),
    ]:
        result = _cli("fetch-ucf101", "--out", str(tmp_path / "bad"), *args)
        assert isinstance(result.exception, VidcliError), (args, result.output)
        assert message in str(result.exception)
    result = _cli("fetch-ucf101", "--out", str(tmp_path / "bad"), "--split-by", "actor")
    assert result.exit_code == 2 and "'actor' is not one of" in result.output
    assert not (tmp_path / "bad").exists()


def test_help_says_how_counts_are_met():
    result = _cli("fetch-ucf101", "--help")
    assert result.exit_code == 0
    text = " ".join(result.stdout.split())
    assert "no group spans two splits" in text and "--split-by" in text
    assert data_ucf101.DEFAULT_URL == ucf101.DEFAULT_URL


def test_quiet_leaves_stderr_empty_and_json_on_stdout(server, tmp_path):
    args = ["fetch-ucf101", "--class-names", "YoYo", "--split", "train=2", "--url", server.url(ZIP_PATH), "-q"]
    result = _cli(*args, "--out", str(tmp_path / "a"))
    assert result.exit_code == 0 and result.stdout == "" and result.stderr == ""
    result = _cli(*args, "--out", str(tmp_path / "b"), "--json")
    assert result.exit_code == 0 and result.stderr == "" and json.loads(result.stdout)["fetched"] == 2


def test_help_ends_with_examples():
    text = _cli("fetch-ucf101", "--help").stdout
    examples = text[text.rindex("Examples"):]
    assert examples.count("vidcli data fetch-ucf101") >= 3 and "<group|clip>" in text and "--quiet" in text


def test_redirected_url_is_followed(server, tmp_path):
    server.redirects["/old/ucf.zip"] = ZIP_PATH
    done = _fetch(tmp_path / "o", server.url("/old/ucf.zip"), classes=1)
    assert done["fetched"] == sum(SPLIT.values())
    assert all(r.status in (206, 302) for r in server.gets())
    server.redirects["/loop.zip"] = "/loop.zip"
    with pytest.raises(VidcliError, match="too many redirects") as err:
        _fetch(tmp_path / "p", server.url("/loop.zip"))
    assert err.value.exit_code == 1 and not (tmp_path / "p").exists()


@pytest.mark.parametrize("delta", [100, -100])
def test_server_lying_about_its_length_fails_cleanly(server, tmp_path, delta):
    """HEAD and every answer claim a wrong Content-Length: one line, exit 1, nothing written."""
    server.length_delta = delta
    with pytest.raises(VidcliError) as err:
        _fetch(tmp_path / "o", server.url(ZIP_PATH))
    assert err.value.exit_code == 1 and "\n" not in str(err.value) and server.url(ZIP_PATH) in str(err.value)
    assert not (tmp_path / "o").exists()


def test_server_lying_about_member_lengths_fails_cleanly(server, tmp_path, monkeypatch):
    original = ucf101.read_directory

    def then_lie(*args, **kwargs):
        directory = original(*args, **kwargs)
        server.length_delta = 7
        return directory

    monkeypatch.setattr(ucf101, "read_directory", then_lie)
    with pytest.raises(VidcliError, match="Content-Length") as err:
        _fetch(tmp_path / "o", server.url(ZIP_PATH))
    assert err.value.exit_code == 1 and not list((tmp_path / "o").rglob("*.avi")) and not _partials(tmp_path / "o")


def test_slow_server_times_out_after_retries(server, tmp_path, monkeypatch):
    monkeypatch.setattr(httprange, "TIMEOUT", (1.0, 0.2))
    server.stall = 0.5
    with pytest.raises(VidcliError, match=r"failed after 4 tries: no answer within 0.2 s") as err:
        _fetch(tmp_path / "o", server.url(ZIP_PATH))
    assert err.value.exit_code == 1


def test_full_disk_stops_the_fetch_with_one_line(server, tmp_path, monkeypatch):
    class Full(io.BytesIO):
        def write(self, data) -> int:
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(ucf101, "open", lambda path, mode: Full(), raising=False)
    out = tmp_path / "ucf"
    with pytest.raises(VidcliError, match="No space left on device") as err:
        _fetch(out, server.url(ZIP_PATH))
    assert err.value.exit_code == 1 and not list(out.rglob("*.avi")) and not _partials(out)
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(VidcliError, match="cannot") as err:
        _fetch(blocker / "ucf", server.url(ZIP_PATH))
    assert err.value.exit_code == 1


def test_clips_that_cannot_be_moved_are_one_line(server, tmp_path, monkeypatch):
    out = tmp_path / "ucf"
    _fetch(out, server.url(ZIP_PATH), seed=0)

    def denied(src, dst):
        raise PermissionError(13, "Permission denied", str(src))

    monkeypatch.setattr(ucf101.os, "replace", denied)
    with pytest.raises(VidcliError, match="Permission denied") as err:
        _fetch(out, server.url(ZIP_PATH), seed=5)
    assert err.value.exit_code == 1 and "\n" not in str(err.value)
