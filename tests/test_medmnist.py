"""MedMNIST 3D fetching, validation and loading, against npz files built here and a local server."""

from __future__ import annotations

import hashlib
import io
import json
import re
import typing
from pathlib import Path

import numpy as np
import pytest
import typer
from httpserver import FileServer
from typer.testing import CliRunner

from vidcli import httprange
from vidcli.cli import data_medmnist
from vidcli.cli.data_medmnist import register
from vidcli.datasets import medmnist as mm
from vidcli.datasets.medmnist import fetch_medmnist, load_volume_file, load_volumes
from vidcli.errors import VidcliError

LABELS = mm.DATASETS["fracturemnist3d"].labels  # three classes


def make_npz(size: int = 28, counts=(4, 2, 3), drop: str | None = None, dtype=np.uint8, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in zip(mm.SPLITS, counts, strict=True):
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, size, size, size)).astype(dtype)
        arrays[f"{split}_labels"] = (np.arange(n) % len(LABELS)).reshape(n, 1).astype(np.uint8)
    arrays.pop(drop, None)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


NPZ = make_npz()
MD5 = hashlib.md5(NPZ).hexdigest()


@pytest.fixture(autouse=True)
def _no_backoff(monkeypatch):
    monkeypatch.setattr(httprange, "BACKOFF", 0)


@pytest.fixture
def server(monkeypatch):
    """A Zenodo stand-in; fracturemnist3d's official MD5 is swapped for our test file's."""
    with FileServer({"/fracturemnist3d.npz": NPZ}) as srv:
        srv.chunk = 8192
        monkeypatch.setattr(mm, "_ZENODO", srv.url("/") + "{name}{suffix}.npz?download=1")
        monkeypatch.setitem(mm.DATASETS, "fracturemnist3d", mm.MedMnistSet({28: MD5, 64: "0" * 32}, LABELS))
        yield srv


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_every_3d_set_has_both_sizes_official_urls_and_labels():
    assert set(mm.DATASETS) == {
        "organmnist3d", "nodulemnist3d", "adrenalmnist3d", "fracturemnist3d", "vesselmnist3d", "synapsemnist3d"
    }  # fmt: skip
    classes = {name: len(s.labels) for name, s in mm.DATASETS.items()}
    assert classes == {
        "organmnist3d": 11, "nodulemnist3d": 2, "adrenalmnist3d": 2,
        "fracturemnist3d": 3, "vesselmnist3d": 2, "synapsemnist3d": 2,
    }  # fmt: skip
    for info in mm.DATASETS.values():
        assert sorted(info.md5) == [28, 64] and all(re.fullmatch(r"[0-9a-f]{32}", m) for m in info.md5.values())
    organ = mm.DATASETS["organmnist3d"]
    assert organ.url("organmnist3d", 64) == "https://zenodo.org/records/10519652/files/organmnist3d_64.npz?download=1"
    assert organ.md5[28] == "a0c5a1ff56af4f155c46d46fbb45a2fe" and organ.labels[0] == "liver"


def test_fetch_writes_npz_and_labels_sidecar(server, tmp_path):
    npz = fetch_medmnist("FractureMNIST3D", 28, tmp_path)
    assert npz == tmp_path / "fracturemnist3d_28.npz" and npz.read_bytes() == NPZ
    sidecar = json.loads((tmp_path / "fracturemnist3d_28.labels.json").read_text())
    assert sidecar == {
        "name": "fracturemnist3d",
        "size": 28,
        "labels": list(LABELS),
        "source": server.url("/fracturemnist3d.npz") + "?download=1",
        "md5": MD5,
    }
    assert _files(tmp_path) == ["fracturemnist3d_28.labels.json", "fracturemnist3d_28.npz"]
    fetch_medmnist("fracturemnist3d", 28, tmp_path)
    assert len(server.gets()) == 1, "a verified file is not fetched twice"


def test_load_volumes_gives_unit_float_volumes_and_names(server, tmp_path):
    npz = fetch_medmnist("fracturemnist3d", 28, tmp_path)
    x, y, names = load_volumes(npz, "val")
    raw = np.load(io.BytesIO(NPZ))
    assert x.shape == (2, 28, 28, 28, 1) and x.dtype == np.float32
    assert x.min() >= 0.0 and x.max() <= 1.0
    np.testing.assert_allclose(x[..., 0] * 255, raw["val_images"], atol=1e-3)
    assert y.dtype == np.int64 and y.tolist() == [0, 1] and names == list(LABELS)
    raw_x, raw_y, _ = load_volumes(npz, "val", dtype="uint8")
    assert raw_x.dtype == np.uint8 and raw_x.shape == x.shape and np.array_equal(raw_x[..., 0], raw["val_images"])
    assert raw_y.tolist() == y.tolist()
    with pytest.raises(VidcliError, match="split"):
        load_volumes(npz, "training")


def test_load_volumes_without_sidecar_names_classes_by_index(tmp_path):
    npz = tmp_path / "custom_28.npz"
    npz.write_bytes(NPZ)
    _, y, names = load_volumes(npz, "train")
    assert names == ["0", "1", "2"] and y.tolist() == [0, 1, 2, 0]


def test_wrong_md5_keeps_nothing_under_the_final_name(server, tmp_path):
    server.files["/fracturemnist3d.npz"] = make_npz(seed=1)
    with pytest.raises(VidcliError) as info:
        fetch_medmnist("fracturemnist3d", 28, tmp_path)
    assert MD5 in str(info.value) and "fracturemnist3d_28.npz" in str(info.value)
    assert _files(tmp_path) == []


def test_interrupted_download_is_resumed_with_range(server, tmp_path):
    server.drop_after, server.drops = 50_000, 1
    npz = fetch_medmnist("fracturemnist3d", 28, tmp_path)
    assert npz.read_bytes() == NPZ
    assert [(r.range, r.status) for r in server.gets()] == [(None, 200), ("bytes=50000-", 206)]


def test_download_cut_too_often_resumes_on_the_next_run(server, tmp_path):
    server.drop_after, server.drops = 20_000, None
    with pytest.raises(VidcliError, match="interrupted"):
        fetch_medmnist("fracturemnist3d", 28, tmp_path)
    assert not (tmp_path / "fracturemnist3d_28.npz").exists()
    waiting = tmp_path / mm.INCOMING / "fracturemnist3d_28.npz.partial"
    assert waiting.stat().st_size == 4 * 20_000
    server.drops = 0
    assert fetch_medmnist("fracturemnist3d", 28, tmp_path).read_bytes() == NPZ
    assert server.gets()[-1].range == "bytes=80000-"
    assert _files(tmp_path) == ["fracturemnist3d_28.labels.json", "fracturemnist3d_28.npz"]


def test_server_without_range_support_restarts(server, tmp_path):
    server.ranges = False
    server.drop_after, server.drops = 50_000, 1
    npz = fetch_medmnist("fracturemnist3d", 28, tmp_path)
    assert npz.read_bytes() == NPZ
    assert [(r.range, r.status) for r in server.gets()] == [(None, 200), ("bytes=50000-", 200)]


@pytest.mark.parametrize(("code", "exit_code"), [(404, 2), (410, 2), (500, 1), (503, 1)])
def test_http_errors_are_classified_like_every_downloader(server, tmp_path, code, exit_code):
    """4xx: the URL is wrong (bad input, exit 2, as fetch-ucf101); 5xx after retries: the job failed (1)."""
    server.status["/fracturemnist3d.npz"] = code
    with pytest.raises(VidcliError) as info:
        fetch_medmnist("fracturemnist3d", 28, tmp_path)
    assert str(code) in str(info.value) and "fracturemnist3d.npz" in str(info.value)
    assert info.value.exit_code == exit_code and "\n" not in str(info.value)
    assert not (tmp_path / "fracturemnist3d_28.npz").exists()


def test_unknown_name_and_size_are_bad_input(tmp_path):
    with pytest.raises(VidcliError) as info:
        fetch_medmnist("brainmnist3d", 28, tmp_path)
    assert all(word in str(info.value) for word in ("brainmnist3d", "organmnist3d", "synapsemnist3d"))
    with pytest.raises(VidcliError, match="size"):
        fetch_medmnist("organmnist3d", 32, tmp_path)


@pytest.mark.parametrize(
    ("payload", "problem"),
    [
        (make_npz(drop="val_labels"), "'val_labels' missing"),
        (make_npz(drop="test_images"), "'test_images' missing"),
        (make_npz(dtype=np.float32), "train_images must be uint8"),
        (make_npz(size=16), "train_images has shape"),
    ],
)
def test_bad_layout_is_rejected_naming_the_key(tmp_path, payload, problem):
    src = tmp_path / "in.npz"
    src.write_bytes(payload)
    out = tmp_path / "out"
    with pytest.raises(VidcliError, match=re.escape(problem)):
        fetch_medmnist("fracturemnist3d", 28, out, file=src, verify=False)
    assert _files(out) == []


def test_labels_out_of_range_are_rejected(tmp_path):
    arrays = dict(np.load(io.BytesIO(NPZ)))
    arrays["test_labels"] = np.full((3, 1), 7, np.int64)
    src = tmp_path / "in.npz"
    np.savez(src, **arrays)
    with pytest.raises(VidcliError, match="test_labels has values outside 0..2"):
        fetch_medmnist("fracturemnist3d", 28, tmp_path / "out", file=src, verify=False)


def test_local_file_is_verified_then_imported(server, tmp_path):
    good, bad = tmp_path / "good.npz", tmp_path / "bad.npz"
    good.write_bytes(NPZ)
    bad.write_bytes(make_npz(seed=2))
    out = tmp_path / "out"
    with pytest.raises(VidcliError, match="checksum mismatch"):
        fetch_medmnist("fracturemnist3d", 28, out, file=bad)
    assert _files(out) == []
    assert fetch_medmnist("fracturemnist3d", 28, out, file=good).read_bytes() == NPZ
    assert fetch_medmnist("fracturemnist3d", 28, out, file=bad, verify=False).read_bytes() == bad.read_bytes()
    assert server.gets() == []


def test_load_volume_file_accepts_both_layouts(tmp_path):
    a, b, c = tmp_path / "a.npy", tmp_path / "b.npy", tmp_path / "c.npy"
    np.save(a, np.full((8, 6, 4), 255, np.uint8))
    np.save(b, np.full((8, 6, 4, 1), 0.5, np.float64))
    np.save(c, np.zeros((8, 6, 4, 3), np.uint8))
    va, vb = load_volume_file(a), load_volume_file(b)
    assert va.shape == vb.shape == (8, 6, 4, 1) and va.dtype == vb.dtype == np.float32
    assert va.max() == 1.0 and vb.max() == 0.5
    with pytest.raises(VidcliError, match="c.npy"):
        load_volume_file(c)
    with pytest.raises(VidcliError, match="not found"):
        load_volume_file(tmp_path / "missing.npy")


def _cli() -> typer.Typer:
    app = typer.Typer()
    register(app)

    @app.callback()
    def main() -> None:
        """Keep `medmnist` a subcommand as under `vidcli data`."""

    return app


def test_cli_prints_paths_as_json(server, tmp_path):
    result = CliRunner().invoke(_cli(), ["medmnist", "--name", "fracturemnist3d", "--out", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["npz"] == str(tmp_path / "fracturemnist3d_28.npz")
    assert Path(record["labels"]).is_file() and Path(record["npz"]).read_bytes() == NPZ


def test_cli_imports_a_file_and_reports_user_errors(tmp_path, monkeypatch):
    monkeypatch.setitem(mm.DATASETS, "fracturemnist3d", mm.MedMnistSet({28: MD5, 64: "0" * 32}, LABELS))
    src = tmp_path / "in.npz"
    src.write_bytes(NPZ)
    out = tmp_path / "out"
    ok = CliRunner().invoke(_cli(), ["medmnist", "--name", "fracturemnist3d", "--file", str(src), "--out", str(out)])
    assert ok.exit_code == 0 and "fracturemnist3d_28.npz" in ok.stdout
    both = CliRunner().invoke(_cli(), ["medmnist", "--name", "fracturemnist3d", "--file", str(src), "--url",
                                       "http://127.0.0.1:9/x.npz", "--out", str(tmp_path / "other")])
    assert "--file and --url" in str(both.exception) and not (tmp_path / "other").exists()
    for option, value in (("--name", "nosuchset"), ("--size", "32")):
        bad = CliRunner().invoke(_cli(), ["medmnist", option, value, "--out", str(out)])
        assert bad.exit_code == 2 and f"'{value}' is not one of" in bad.output


def test_cli_choices_match_the_catalog_and_help_ends_with_examples():
    assert typing.get_args(data_medmnist.Name) == tuple(mm.DATASETS)
    text = CliRunner().invoke(_cli(), ["medmnist", "--help"]).stdout
    assert "<28|64>" in text and "--quiet" in text
    assert text[text.rindex("Examples"):].count("vidcli data medmnist") >= 3


def test_cli_quiet_prints_only_the_result(server, tmp_path):
    args = ["medmnist", "--name", "FractureMNIST3D", "--out", str(tmp_path), "--quiet"]
    result = CliRunner().invoke(_cli(), args)
    assert result.exit_code == 0 and result.stderr == "" and result.stdout.startswith("wrote ")
    again = CliRunner().invoke(_cli(), args)  # "already there" is a log line
    assert again.exit_code == 0 and again.stderr == ""
