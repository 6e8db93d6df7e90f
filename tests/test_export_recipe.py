"""Export without training: `vidcli export-onnx RECIPE.yaml` builds the recipe's model with its release weights
(no data folder: the class count comes from the file) and writes an ONNX file that reproduces the reference with
ONNX Runtime alone — the online TSM frame by frame through its `stream_states`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from conftest import fixture_path, write_recipe
from test_tsm_mobilenet import OFFLINE, ONLINE, official_sd, write_release
from typer.testing import CliRunner

from vidcli.cli.main import app

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("torch_one_thread")]
DIR = "tsm_mobilenetv2"
runner = CliRunner()


def _recipe(tmp_path: Path, pretrained: Path, size: tuple[int, int], online: bool, segments: int = 8) -> Path:
    raw = {"name": "release", "data": {"root": str(tmp_path / "no_data_here"), "frames": segments,
                                       "size": list(size), "sampling": "segments"},
           "model": {"arch": "tsm", "pretrained": str(pretrained),
                     "params": {"backbone": "mobilenet_v2", "online": online, "num_segments": segments}}}
    return write_recipe(tmp_path / "release.yaml", raw)


def _export(recipe: Path, out: Path, *extra: str) -> dict:
    result = runner.invoke(app, ["export-onnx", str(recipe), "--out", str(out), "--json", "-q", *extra])
    assert result.exit_code == 0, result.stderr + repr(result.exception)
    return json.loads(result.stdout)


def _stream(path: Path, frames: np.ndarray) -> np.ndarray:
    """Per-frame logits of a stream ONNX file, driven by its metadata alone."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    specs = json.loads(meta["stream_states"])
    states = {s["name"]: np.zeros(s["shape"], s["dtype"]) for s in specs}
    out = []
    for frame in frames:
        values = session.run(["logits", *(s["output"] for s in specs)], {meta["stream_input"]: frame, **states})
        states = {s["name"]: v for s, v in zip(specs, values[1:], strict=True)}
        out.append(values[0])
    return np.stack(out)


def test_offline_release_exported_from_a_recipe_reproduces_the_reference(tmp_path, monkeypatch):
    names = tmp_path / "k400.txt"
    names.write_text("".join(f"action {i}\n" for i in range(400)))
    monkeypatch.setenv("VIDCLI_LABELS_KINETICS400", str(names))  # the list a release's name points to
    monkeypatch.setenv("VIDCLI_CACHE", str(tmp_path / "cache"))
    recipe = _recipe(tmp_path, fixture_path(DIR, f"{OFFLINE}.pth"), (112, 112), online=False)
    result = _export(recipe, tmp_path / "offline.onnx")
    meta = result["metadata"]
    assert json.loads(meta["labels"])[7] == "action 7" and meta["layout"] == "N(TC)HW"
    with np.load(fixture_path(DIR, f"{OFFLINE}_reference.npz")) as ref:
        session = ort.InferenceSession(result["path"], providers=["CPUExecutionProvider"])
        got = session.run(None, {"video": ref["x"]})[0]  # the reference forward's own input, (2, 24, 112, 112)
        np.testing.assert_allclose(got, ref["logits"], atol=1e-4, rtol=0)


def test_online_demo_file_exported_from_a_recipe_streams_like_the_reference(tmp_path):
    recipe = _recipe(tmp_path, fixture_path(DIR, "mobilenetv2_jester_online.pth.tar"), (224, 224), online=True)
    result = _export(recipe, tmp_path / "online.onnx")
    meta = result["metadata"]
    assert result["stream"] and json.loads(meta["labels"]) == [f"class_{i}" for i in range(27)]  # no known list
    with np.load(fixture_path(DIR, "mobilenetv2_jester_online_reference.npz")) as ref:
        got = _stream(Path(result["path"]), ref["frames"])
        np.testing.assert_allclose(got, ref["logits_per_frame"], atol=1e-4, rtol=0)


@pytest.mark.parametrize(("classes", "size", "online"), [(7, (96, 128), True), (51, (160, 160), False)])
def test_hold_out_style_files_of_other_sizes_and_class_counts(tmp_path, classes, size, online):
    """Official-format files written here (other heads, other inputs): the export equals PyTorch on them."""
    from vidcli.backends.torch import tsm, tsm_import, tsm_online

    if online:
        path = tmp_path / "my_online.pth.tar"
        torch.save(official_sd(ONLINE, classes, seed=classes), path)
    else:
        path = write_release(tmp_path / "TSM_something_RGB_mobilenetv2_shift8_blockres_avg_segment4_e9.pth",
                             official_sd(OFFLINE, classes, seed=classes))
    segments = 4
    recipe = _recipe(tmp_path, path, size, online, segments)
    result = _export(recipe, tmp_path / "m.onnx")
    assert len(json.loads(result["metadata"]["labels"])) == classes
    params = tsm.TsmParams(backbone="mobilenet_v2", online=online, num_segments=segments)
    model = tsm.build(params, classes)
    tsm_import.load_pretrained(model, str(path), params)
    model.eval()
    clip = torch.rand(1, segments, 3, *size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        if online:
            want = tsm_online.stream_clip(model, clip)[0].numpy()
            got = _stream(Path(result["path"]), clip[0][:, None].numpy())[:, 0]
        else:
            want = model(clip).numpy()
            session = ort.InferenceSession(result["path"], providers=["CPUExecutionProvider"])
            got = session.run(None, {"video": clip.reshape(1, -1, *size).numpy()})[0]
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_bad_recipes_for_export_are_one_line(tmp_path):
    shift4 = tmp_path / "TSM_kinetics_RGB_mobilenetv2_shift4_blockres_avg_segment8_e100.pth"
    shift4.write_bytes(b"never opened")
    cases = [
        (_recipe(tmp_path, shift4, (112, 112), online=False), "shift_div"),  # the name disagrees: refused by name
    ]
    nothing = write_recipe(tmp_path / "nothing.yaml", {"name": "n", "data": {"root": str(tmp_path / "none")},
                                                        "model": {"arch": "r2plus1d"}})
    cases.append((nothing, "nothing to export"))
    for recipe, message in cases:
        result = runner.invoke(app, ["export-onnx", str(recipe), "--out", str(tmp_path / "x.onnx")])
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.exit_code == 2 and len(lines) == 1 and message in lines[0], result.stderr
        assert not (tmp_path / "x.onnx").exists()


def test_unavailable_release_labels_fall_back_to_numbers_with_a_warning(tmp_path, monkeypatch):
    monkeypatch.setenv("VIDCLI_LABELS_KINETICS400", str(tmp_path / "missing.txt"))
    monkeypatch.setenv("VIDCLI_CACHE", str(tmp_path / "cache"))
    recipe = _recipe(tmp_path, fixture_path(DIR, f"{OFFLINE}.pth"), (112, 112), online=False)
    result = runner.invoke(app, ["export-onnx", str(recipe), "--out", str(tmp_path / "o.onnx"), "--json"])
    assert result.exit_code == 0, result.stderr
    assert "class names of kinetics400 unavailable" in result.stderr
    assert json.loads(json.loads(result.stdout)["metadata"]["labels"])[:2] == ["class_0", "class_1"]
