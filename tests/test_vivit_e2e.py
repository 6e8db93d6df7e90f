"""ViViT end to end: volume recipes, predict on a volume (`.npy` or `--index` into an npz split), bad input,
and (slow) train -> eval -> export -> predict on synthetic volumes and RGB clips, and the quickstart's accuracy.

The fast tests predict with a hand-made ONNX model (a linear classifier over voxels) that carries the
same metadata an export writes, so they need no framework and no training.
"""

from __future__ import annotations

import errno
import json
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import REPO, one_error_line, vidcli, write_recipe
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from vidcli import recipe as recipe_mod
from vidcli.cli.main import app
from vidcli.datasets import medmnist as mm
from vidcli.datasets.source import open_source
from vidcli.datasets.synth import write_synth_volumes
from vidcli.errors import VidcliError

runner = CliRunner()
QUICKSTART = REPO / "recipes" / "vivit_quickstart.yaml"
ORGAN = REPO / "recipes" / "vivit_organmnist3d.yaml"
SIZE = 8


@pytest.fixture(scope="module")
def volumes(tmp_path_factory) -> Path:
    """3 shapes of 8^3, 4/2/3 volumes per class."""
    root = tmp_path_factory.mktemp("vols")
    return write_synth_volumes(root, classes=3, counts={"train": 4, "val": 2, "test": 3}, size=SIZE)


def linear_onnx(path: Path, size: int = SIZE, labels=("sphere", "cube", "cylinder")) -> Path:
    """Logits = flattened volume @ fixed random W: deterministic and cheap, and it tells volumes apart."""
    n = size**3
    weights = np.random.default_rng(0).standard_normal((n, len(labels))).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["video", "flat_shape"], ["flat"]),
         helper.make_node("MatMul", ["flat", "w"], ["logits"])],
        "linear",
        [helper.make_tensor_value_info("video", TensorProto.FLOAT, [None, size, size, size, 1])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [None, len(labels)])],
        [numpy_helper.from_array(np.array([-1, n], np.int64), "flat_shape"), numpy_helper.from_array(weights, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    meta = {"labels": json.dumps(list(labels)), "input_kind": "volumes", "frames": str(size),
            "frame_step": "1", "size": json.dumps([size, size]), "channels": "1", "sampling": "center",
            "layout": "NTHWC", "normalization": json.dumps({"scale": 1 / 255, "mean": [0.0], "std": [1.0]})}
    for k, v in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return linear_onnx(tmp_path_factory.mktemp("model") / "linear.onnx")


def _predict(*args: str):
    return runner.invoke(app, ["predict", *args])


def _npz(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


# --- recipes ---------------------------------------------------------------------------------


def test_organmnist3d_recipe_has_the_keras_example_settings():
    from vidcli.backends.keras.vivit import VivitParams

    rec = recipe_mod.load(ORGAN)
    assert (rec.train.batch_size, rec.train.learning_rate, rec.train.epochs) == (32, 1e-4, 60)
    assert rec.train.schedule == "constant" and rec.train.weight_decay == 0
    assert rec.data.root == "data/medmnist/organmnist3d_28.npz" and rec.data.format == "volumes"
    params = recipe_mod.from_dict(VivitParams, rec.model.params, "model.params")
    assert params == VivitParams(patch_size=(8, 8, 8), projection_dim=128, num_heads=8, num_layers=8)


def test_quickstart_generates_its_data_where_data_root_points(tmp_path, monkeypatch):
    """`ensure_data` writes `<parent>/synth_volumes_<size>.npz`; the recipe's root must be that file."""
    from vidcli.training import ensure_data

    monkeypatch.chdir(tmp_path)
    rec = recipe_mod.load(QUICKSTART, ["data.synth.train=1", "data.synth.val=1", "data.synth.test=1"])
    assert rec.data.synth.volumes and rec.model.arch == "vivit"
    ensure_data(rec)
    src = open_source(rec.data, "test")
    assert Path(rec.data.root).is_file() and len(src) == rec.data.synth.classes
    assert src.sample_shape == (rec.data.synth.size,) * 3 + (1,)
    assert src.load(0).dtype == np.uint8


# --- predict on volumes ----------------------------------------------------------------------


def test_predict_index_into_an_npz_split(volumes, model):
    result = _predict(str(volumes), "--index", "5", "--split", "test", "--model", str(model), "--json")
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["source"] == f"{volumes}[test:5]"
    assert {p["label"] for p in record["top_k"]} == {"sphere", "cube", "cylinder"}
    assert abs(sum(p["probability"] for p in record["top_k"]) - 1) < 1e-4
    with np.load(volumes) as data:
        np.save(volumes.parent / "five.npy", data["test_images"][5])
    same = json.loads(_predict(str(volumes.parent / "five.npy"), "--model", str(model), "--json").stdout)
    assert same["top_k"] == record["top_k"], "the npz entry and the same volume as .npy must agree"
    other = json.loads(_predict(str(volumes), "--index", "5", "--split", "train", "--model", str(model),
                                "--json").stdout)
    assert other["source"].endswith("[train:5]") and other["top_k"] != record["top_k"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--index", "9"], r"--index 9 is out of range; test_images holds 9 volumes"),
        (["--index", "0", "--split", "holdout"], r"Invalid value for '--split'.*'holdout' is not one of"),
        ([], r"--index picks a volume from an \.npz file"),
    ],
)
def test_predict_index_errors_name_the_problem(volumes, model, args, message):
    result = _predict(str(volumes), *args, "--model", str(model))
    assert result.exit_code == 2
    assert re.search(message, result.stderr), result.stderr


def test_index_with_anything_but_an_npz_is_an_error(model, tmp_path):
    np.save(tmp_path / "v.npy", np.zeros((SIZE,) * 3, np.uint8))
    assert _predict(str(tmp_path / "v.npy"), "--model", str(model)).exit_code == 0
    result = _predict(str(tmp_path / "v.npy"), "--index", "1", "--model", str(model))
    assert result.exit_code == 2 and "v.npy: --index picks a volume from an .npz file" in result.stderr


def test_wrong_volume_size_names_both_shapes(model, tmp_path):
    np.save(tmp_path / "big.npy", np.zeros((16, 16, 16), np.uint8))
    result = _predict(str(tmp_path / "big.npy"), "--model", str(model))
    assert result.exit_code == 2
    assert "volume of shape (16, 16, 16), the model expects (8, 8, 8)" in result.stderr
    npz = _npz(tmp_path / "big.npz", test_images=np.zeros((2, 16, 16, 16), np.uint8))
    result = _predict(str(npz), "--index", "1", "--model", str(model))
    assert f"{npz}[test:1]: volume of shape (16, 16, 16), the model expects (8, 8, 8)" in result.stderr


def test_predict_error_is_one_line_without_traceback(model, tmp_path):
    np.save(tmp_path / "big.npy", np.zeros((4, 4, 4), np.uint8))
    proc = vidcli("predict", str(tmp_path / "big.npy"), "--model", str(model))
    assert proc.returncode == 2
    assert "the model expects (8, 8, 8)" in one_error_line(proc.stderr, only=False)


# --- bad volume data sets ----------------------------------------------------------------------


def _data(root: Path):
    return recipe_mod.from_dict(recipe_mod.DataConfig, {"root": str(root), "format": "volumes"}, "data")


def _good_arrays(n: int = 3, size: int = SIZE) -> dict:
    images = np.zeros((n, size, size, size), np.uint8)
    labels = np.arange(n, dtype=np.uint8).reshape(-1, 1) % 2
    return {f"{s}_{k}": v for s in mm.SPLITS for k, v in (("images", images), ("labels", labels))}


def test_npz_missing_a_split_names_the_key(tmp_path):
    arrays = {k: v for k, v in _good_arrays().items() if not k.startswith("val_")}
    npz = _npz(tmp_path / "d.npz", **arrays)
    open_source(_data(npz), "train")
    with pytest.raises(VidcliError, match="key 'val_images' missing"):
        open_source(_data(npz), "val")


def test_npz_with_wrong_dtype_or_shape_is_rejected(tmp_path):
    floats = _good_arrays()
    floats["train_images"] = floats["train_images"].astype(np.float64)
    with pytest.raises(VidcliError, match="train_images is float64, not uint8"):
        open_source(_data(_npz(tmp_path / "f.npz", **floats)), "train")
    flat = _good_arrays()
    flat["train_images"] = np.zeros((3, SIZE, SIZE), np.uint8)
    with pytest.raises(VidcliError, match=r"train_images has shape \(3, 8, 8\), expected \(N, D, H, W\)"):
        open_source(_data(_npz(tmp_path / "s.npz", **flat)), "train")
    with pytest.raises(VidcliError, match=r"none.npz: volumes file \(\.npz\) not found"):
        open_source(_data(tmp_path / "none.npz"), "train")


def test_unknown_data_set_name_is_bad_input():
    result = runner.invoke(app, ["data", "medmnist", "--name", "brainmnist3d"])
    assert result.exit_code == 2 and "'brainmnist3d' is not one of 'organmnist3d'" in result.stderr


def test_checksum_mismatch_keeps_nothing(tmp_path):
    src = _npz(tmp_path / "organ.npz", **_good_arrays(size=28))
    out = tmp_path / "out"
    with pytest.raises(VidcliError, match="(?i)md5|checksum") as info:
        mm.fetch_medmnist("organmnist3d", 28, out, file=src)
    assert info.value.exit_code in (1, 2)
    assert not (out / "organmnist3d_28.npz").exists() and not (out / "organmnist3d_28.labels.json").exists()


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EACCES])
def test_disk_full_or_permission_error_while_writing_volumes(tmp_path, monkeypatch, code):
    import vidcli.datasets.synth as synth

    def broken(path, **arrays):
        Path(path).write_bytes(b"half")
        raise OSError(code, "simulated")

    monkeypatch.setattr(synth.np, "savez_compressed", broken)
    with pytest.raises(VidcliError, match="cannot write .*synth_volumes_8.npz: simulated") as info:
        write_synth_volumes(tmp_path, classes=2, counts={"train": 1, "val": 1, "test": 1}, size=SIZE)
    assert info.value.exit_code == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_permission_error_moving_a_download_into_place(tmp_path, monkeypatch):
    arrays = _good_arrays(size=28)
    src = _npz(tmp_path / "organ.npz", **arrays)
    monkeypatch.setattr(mm.os, "replace", lambda *a: (_ for _ in ()).throw(PermissionError(errno.EACCES, "denied")))
    with pytest.raises(VidcliError, match="cannot write .*organmnist3d_28.npz: denied") as info:
        mm.fetch_medmnist("organmnist3d", 28, tmp_path / "out", file=src, verify=False)
    assert info.value.exit_code == 1
    assert not (tmp_path / "out" / "organmnist3d_28.npz").exists()


# --- slow: the whole chain --------------------------------------------------------------------


def _tiny_vivit(tmp_path: Path, data: dict, params: dict) -> Path:
    raw = {"name": "vivit_tiny", "data": data, "model": {"arch": "vivit", "params": params},
           "train": {"epochs": 2, "batch_size": 4, "learning_rate": 0.003, "seed": 0, "tensorboard": False}}
    return write_recipe(tmp_path / "vivit_tiny.yaml", raw)


@pytest.mark.slow
def test_volumes_train_eval_export_predict_index(volumes, tmp_path):
    recipe = _tiny_vivit(tmp_path, {"root": str(volumes), "format": "volumes"},
                         {"patch_size": [2, 2, 2], "projection_dim": 16, "num_heads": 2, "num_layers": 1})
    runs_dir = tmp_path / "runs"
    assert runner.invoke(app, ["train", str(recipe), "--runs-dir", str(runs_dir)]).exit_code == 0
    run = runs_dir / "vivit_tiny" / "1"
    ev = runner.invoke(app, ["eval", str(run), "--json"])
    assert ev.exit_code == 0 and json.loads(ev.stdout)["num_samples"] == 9
    ex = runner.invoke(app, ["export-onnx", str(run), "--json"])
    assert ex.exit_code == 0, ex.output
    exported = json.loads(ex.stdout)
    assert exported["max_abs_diff"] <= 1e-4
    assert exported["metadata"]["input_kind"] == "volumes" and exported["metadata"]["channels"] == "1"
    onnx_out = json.loads(_predict(str(volumes), "--index", "2", "--model", exported["path"], "--json").stdout)
    keras_out = json.loads(_predict(str(volumes), "--index", "2", "--model", str(run / "best.keras"),
                                    "--json").stdout)
    assert onnx_out["top_k"][0]["label"] == keras_out["top_k"][0]["label"]
    assert abs(onnx_out["top_k"][0]["probability"] - keras_out["top_k"][0]["probability"]) < 1e-3


@pytest.mark.slow
def test_rgb_clips_train_and_export(tmp_path):
    from vidcli.datasets.synth import write_synth_videos

    root = write_synth_videos(tmp_path / "clips", classes=2, counts={"train": 3, "val": 1, "test": 1}, frames=4,
                              size=16, workers=1)
    recipe = _tiny_vivit(tmp_path, {"root": str(root), "frames": 4, "frame_step": 1, "size": [16, 16]},
                         {"patch_size": [2, 4, 4], "projection_dim": 16, "num_heads": 2, "num_layers": 1})
    runs_dir = tmp_path / "runs"
    assert runner.invoke(app, ["train", str(recipe), "--runs-dir", str(runs_dir)]).exit_code == 0
    run = runs_dir / "vivit_tiny" / "1"
    ex = runner.invoke(app, ["export-onnx", str(run), "--json"])
    assert ex.exit_code == 0, ex.output
    meta = json.loads(ex.stdout)["metadata"]
    assert (meta["input_kind"], meta["channels"], meta["frames"]) == ("videos", "3", "4")
    clip = next((root / "test").rglob("*.avi"))
    pred = json.loads(_predict(str(clip), "--model", json.loads(ex.stdout)["path"], "--json").stdout)
    assert pred["top_k"][0]["label"] in ("left", "right")


@pytest.mark.slow
@pytest.mark.accuracy
def test_quickstart_reaches_90_percent_on_synthetic_volumes(tmp_path, monkeypatch):
    """The recipe as shipped (a few CPU minutes): proof that ViViT learns on built-in data."""
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["train", str(QUICKSTART), "--runs-dir", str(tmp_path / "runs")])
    assert result.exit_code == 0, result.output
    ev = runner.invoke(app, ["eval", str(tmp_path / "runs" / "vivit_quickstart" / "1"), "--json"])
    assert json.loads(ev.stdout)["top1"] >= 0.90
