"""The family contract, for every registered family (timm's test_models idea): at toy sizes, each family goes
through every command the same way — train (one epoch), resume, eval (with the views its sampling allows),
confusion, export-onnx with parity, eval of the export, predict with ONNX Runtime alone, and benchmark.

A family added to the registry without a toy configuration here fails `test_every_family_has_a_toy_config`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import tiny_recipe_dict, write_recipe
from typer.testing import CliRunner

from vidcli.backends import registry
from vidcli.cli.main import app

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("torch_one_thread")]

# One toy model per family, plus the stream variants (a different export and predict path).
TOY: dict[str, dict] = {
    "r2plus1d": {"arch": "r2plus1d", "params": {"filters": [4, 8], "norm": "batch"}},
    "vivit": {"arch": "vivit", "params": {"patch_size": [2, 8, 8], "projection_dim": 16, "num_heads": 2,
                                         "num_layers": 1}},
    "movinet": {"arch": "movinet", "params": {"model_id": "a0"}},
    "movinet_stream": {"arch": "movinet", "params": {"model_id": "a0", "causal": True}},
    "tsm": {"arch": "tsm", "params": {"num_segments": 4, "width": 8, "layers": [1, 1, 1, 1], "shift_div": 4},
            "sampling": "segments"},
    "tsm_online": {"arch": "tsm", "params": {"num_segments": 4, "backbone": "mobilenet_v2", "online": True},
                   "sampling": "segments"},
}
STREAMS = {"movinet_stream", "tsm_online"}
runner = CliRunner()


def test_every_family_has_a_toy_config():
    assert {v["arch"] for v in TOY.values()} == set(registry.FAMILIES)


def _ok(args: list[str]) -> str:
    result = runner.invoke(app, args)
    assert result.exit_code == 0, f"{args}: {result.stderr}{result.exception!r}"
    return result.stdout


@pytest.fixture(scope="module", params=sorted(TOY))
def trained(request, tiny_data, tmp_path_factory) -> tuple[str, Path]:
    """One epoch of each toy family on the tiny data, through `vidcli train`."""
    name = request.param
    toy = TOY[name]
    raw = tiny_recipe_dict(tiny_data, epochs=1, tensorboard=False, batch_size=6)
    raw["name"] = name
    raw["model"] = {"arch": toy["arch"], "params": toy["params"]}
    if "sampling" in toy:
        raw["data"].pop("frame_step")
        raw["data"]["sampling"] = toy["sampling"]
    folder = tmp_path_factory.mktemp(f"contract_{name}")
    recipe = write_recipe(folder / f"{name}.yaml", raw)
    out = json.loads(_ok(["train", str(recipe), "--runs-dir", str(folder / "runs"), "--json", "--quiet"]))
    return name, Path(out["run"])


def test_train_writes_a_complete_run(trained):
    name, run = trained
    state = json.loads((run / "run.json").read_text())
    assert state["status"] == "finished" and state["epochs_done"] == 1
    assert state["data"]["splits"]["train"]["clips"] == 18  # the data's fingerprint
    suffix = registry.SUFFIXES[registry.backend_name(TOY[name]["arch"])]
    assert (run / f"best{suffix}").is_file() and (run / f"last{suffix}").is_file()
    assert len((run / "history.csv").read_text().splitlines()) == 2
    card = json.loads((run / "card.json").read_text())
    assert card["arch"] == TOY[name]["arch"] and json.loads(card["labels"]) == ["left", "right", "up"]


def test_resume_trains_on(trained, tmp_path):
    name, run = trained
    copy = tmp_path / "runs" / name / "1"
    shutil.copytree(run, copy)
    out = json.loads(_ok(["train", "--resume", str(copy), "--set", "train.epochs=2", "--json", "--quiet"]))
    assert out["epochs_done"] == 2 and out["status"] == "finished"
    rows = (copy / "history.csv").read_text().splitlines()[1:]
    assert [r.split(",")[0] for r in rows] == ["1", "2"]
    assert rows[0] == (run / "history.csv").read_text().splitlines()[1]  # epoch 1 kept as it was


def test_eval_and_views(trained):
    name, run = trained
    one = json.loads(_ok(["eval", str(run), "--json", "--quiet"]))
    assert one["num_samples"] == 6 and one["checkpoint"].startswith("best") and (one["clips"], one["crops"]) == (1, 1)
    two = json.loads(_ok(["eval", str(run), "--clips", "2", "--json", "--quiet"]))
    assert two["clips"] == 2 and two["num_samples"] == 6
    crops = runner.invoke(app, ["eval", str(run), "--crops", "3", "--json", "--quiet"])
    if TOY[name].get("sampling") == "segments":
        assert crops.exit_code == 0, crops.stderr
        assert json.loads(crops.stdout)["crops"] == 3
    else:  # letterboxed frames have nothing to crop: refused in one line
        assert crops.exit_code == 2 and crops.stderr.count("error:") == 1 and "--crops" in crops.stderr
    metrics = json.loads((run / "metrics.json").read_text())
    assert {"test", "test_2x1"} <= set(metrics)
    conf = json.loads(_ok(["confusion", str(run), "--json", "--quiet"]))
    assert sum(map(sum, conf["matrix"])) == 6


def test_export_eval_and_predict_agree(trained, tiny_data):
    name, run = trained
    result = json.loads(_ok(["export-onnx", str(run), "--json", "--quiet"]))
    assert result["max_abs_diff"] <= 1e-4 and bool(result.get("stream")) == (name in STREAMS)
    meta = result["metadata"]
    assert {"color", "resize", "frame_sampling", "value_range", "output"} <= set(meta)
    onnx_file = Path(result["path"])
    framework = json.loads(_ok(["eval", str(run), "--json", "--quiet"]))
    exported = json.loads(_ok(["eval", str(onnx_file), "--json", "--quiet"]))
    assert exported["top1"] == framework["top1"] and exported["loss"] == pytest.approx(framework["loss"], abs=1e-3)
    clip = sorted((tiny_data / "test").rglob("*.avi"))[0]
    args = ["predict", str(clip), "-m", str(onnx_file), "--json", "-k", "2", "--quiet"]
    if name in STREAMS:
        args.append("--stream")
    rows = [json.loads(line) for line in _ok(args).splitlines()]
    assert rows and all(len(r["top_k"]) == 2 for r in rows)
    # A client with only onnxruntime + cv2 + the metadata gets what `vidcli predict` says
    import onnx_client

    probs = onnx_client.classify(str(onnx_file), str(clip))
    clip_rows = [json.loads(line) for line in _ok(args[:-1] if name in STREAMS else args).splitlines()]
    labels = json.loads(meta["labels"])
    for item in clip_rows[-1]["top_k"]:
        assert probs[labels.index(item["label"])] == pytest.approx(item["probability"], abs=1e-4)


def test_benchmark(trained):
    name, run = trained
    backend = registry.backend_name(TOY[name]["arch"])
    result = runner.invoke(app, ["benchmark", str(run), "--runs", "1", "--warmup", "0", "--json", "--quiet"])
    if name in STREAMS:
        assert result.exit_code == 2 and "stream model" in result.stderr
        return
    assert result.exit_code == 0, result.stderr
    rows = json.loads(result.stdout)["rows"]
    assert [r["format"] for r in rows] == [backend, "onnx"] and rows[1]["max_abs_diff"] <= 1e-4
