"""The model card: what an exported file says about its input, read back and checked; hostile files are one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from typer.testing import CliRunner

from vidcli.cli.main import app
from vidcli.errors import VidcliError
from vidcli.modelcard import ModelCard, to_layout

GOOD = ModelCard(labels=["a", "b", "c"], frames=2, size=(4, 6))


def _onnx(path: Path, meta: dict[str, str], outputs: int = 3, rank: int = 5) -> Path:
    """A tiny valid graph (global mean -> a linear map to `outputs` logits) carrying `meta`."""
    shape = ["batch", 2, 4, 6, 3][:rank]
    x = helper.make_tensor_value_info("video", TensorProto.FLOAT, shape)
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", outputs])
    axes = helper.make_tensor("axes", TensorProto.INT64, [rank - 1], list(range(1, rank)))
    w = helper.make_tensor("w", TensorProto.FLOAT, [1, outputs], [1.0] * outputs)
    nodes = [helper.make_node("ReduceMean", ["video", "axes"], ["m"], keepdims=0),
             helper.make_node("Unsqueeze", ["m", "one"], ["m2"]),
             helper.make_node("MatMul", ["m2", "w"], ["logits"])]
    one = helper.make_tensor("one", TensorProto.INT64, [1], [1])
    graph = helper.make_graph(nodes, "g", [x], [y], [axes, w, one])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    for k, v in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.save(model, path)
    return path


def test_round_trip_and_the_words_a_client_needs():
    meta = GOOD.to_metadata()
    back = ModelCard.from_metadata(meta, "m")
    assert (back.labels, back.frames, back.size, back.layout, back.resize) == (["a", "b", "c"], 2, (4, 6), "NTHWC",
                                                                                 "letterbox")
    assert meta["color"] == "RGB" and meta["pad_value"] == "0" and "logits" in meta["output"]
    assert "letterbox" in meta["resize_rule"] and "INTER_AREA" in meta["interpolation"]
    tsm = ModelCard(labels=["a"], frames=8, size=(224, 224), sampling="segments", resize="cover_crop",
                    layout="N(TC)HW")
    words = tsm.to_metadata()
    assert "centre" in words["resize_rule"] and "segments" in words["frame_sampling"]


def test_layouts_put_the_same_values_in_their_place():
    x = np.arange(2 * 3 * 4 * 5 * 3, dtype=np.float32).reshape(2, 3, 4, 5, 3)
    tchw = to_layout(x, "NTCHW")
    assert tchw.shape == (2, 3, 3, 4, 5) and tchw[1, 2, 1, 3, 4] == x[1, 2, 3, 4, 1]
    flat = to_layout(x, "N(TC)HW")
    assert flat.shape == (2, 9, 4, 5) and flat[1, 2 * 3 + 1, 3, 4] == x[1, 2, 3, 4, 1]  # frame-major, as TSN


@pytest.mark.parametrize(("change", "message"), [
    ({"labels": '{"a": 1}'}, "'labels' must be a non-empty JSON list"),
    ({"labels": "not json"}, "'labels' is not valid JSON"),
    ({"size": "[0, 0]"}, "'size' must be \\[height, width\\] of positive integers"),
    ({"size": "[4]"}, "'size' must be"),
    ({"frames": "0"}, "'frames' must be >= 1"),
    ({"frames": "two"}, "'frames' must be an integer"),
    ({"normalization": '{"scale": 1, "mean": [0], "std": [1, 1, 1]}'}, "need 3 values"),
    ({"normalization": '{"scale": 1, "mean": [0, 0, 0], "std": [0, 1, 1]}'}, "above 0"),
    ({"layout": "NCTHW"}, "'layout' must be one of"),
    ({"sampling": "random"}, "'sampling' must be"),
    ({"stream_states": "[1, 2]"}, "malformed 'stream_states'"),
])
def test_hostile_metadata_is_one_error(change, message):
    with pytest.raises(VidcliError, match=message):
        ModelCard.from_metadata({**GOOD.to_metadata(), **change}, "model.onnx")


def test_hostile_files_through_predict_are_one_line(tmp_path):
    clip = tmp_path / "x.avi"
    clip.write_bytes(b"")
    cases = {
        "outputs.onnx": (_onnx(tmp_path / "outputs.onnx", GOOD.to_metadata(), outputs=5), "5 outputs but its "
                         "metadata lists 3 labels"),
        "labels.onnx": (_onnx(tmp_path / "labels.onnx", {**GOOD.to_metadata(), "labels": '"abc"'}), "labels"),
        "size.onnx": (_onnx(tmp_path / "size.onnx", {**GOOD.to_metadata(), "size": "[0, 0]"}), "size"),
        "rank.onnx": (_onnx(tmp_path / "rank.onnx", GOOD.to_metadata(), rank=4), "rank 4"),
        "nolabels.onnx": (_onnx(tmp_path / "nolabels.onnx", {}), "no class labels"),
    }
    (tmp_path / "garbage.onnx").write_bytes(b"\x00not a model")
    cases["garbage.onnx"] = (tmp_path / "garbage.onnx", "not a loadable ONNX model")
    for name, (path, message) in cases.items():
        result = CliRunner().invoke(app, ["predict", str(clip), "-m", str(path)])
        assert result.exit_code == 2, (name, result.stderr, result.exception)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], (name, lines)


def test_a_good_file_predicts(tmp_path, testdata):
    path = _onnx(tmp_path / "good.onnx", GOOD.to_metadata())
    result = CliRunner().invoke(app, ["predict", str(testdata / "videos" / "box.mp4"), "-m", str(path), "--json"])
    assert result.exit_code == 0, result.stderr
    row = json.loads(result.stdout)
    assert sum(t["probability"] for t in row["top_k"]) == pytest.approx(1, abs=1e-5)
