"""Adding a family is its own module plus one registry line: tests/toy_family.py, registered here, goes through
train, resume, eval with views, export with parity, eval of the export, predict and benchmark with no other edit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import tiny_recipe_dict, write_recipe
from typer.testing import CliRunner

from vidcli.backends import registry
from vidcli.cli.main import app

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("torch_one_thread")]
runner = CliRunner()


def _ok(*args: str) -> dict | list:
    result = runner.invoke(app, [*args, "--json", "-q"])
    assert result.exit_code == 0, f"{args}: {result.stderr}{result.exception!r}"
    lines = result.stdout.splitlines()
    return json.loads(lines[0]) if len(lines) == 1 else [json.loads(x) for x in lines]


def test_a_family_in_one_module_runs_every_command(tiny_data, tmp_path, monkeypatch):
    monkeypatch.setitem(registry.FAMILIES, "toy", "toy_family")  # the one registry line
    raw = tiny_recipe_dict(tiny_data, epochs=1, tensorboard=False)
    raw["name"] = "toy"
    raw["model"] = {"arch": "toy", "params": {"width": 4}}
    recipe = write_recipe(tmp_path / "toy.yaml", raw)
    run = Path(_ok("train", str(recipe), "--runs-dir", str(tmp_path / "runs"))["run"])
    assert _ok("train", "--resume", str(run), "--set", "train.epochs=2")["epochs_done"] == 2
    framework = _ok("eval", str(run), "--clips", "2")
    exported = _ok("export-onnx", str(run))
    assert exported["max_abs_diff"] <= 1e-4 and exported["metadata"]["layout"] == "NTCHW"
    assert _ok("eval", str(run / "model.onnx"), "--clips", "2")["top1"] == framework["top1"]
    clip = sorted((tiny_data / "test").rglob("*.avi"))[0]
    assert _ok("predict", str(clip), "-m", str(run))["top_k"]
    rows = _ok("benchmark", str(run), "--runs", "1", "--warmup", "0")["rows"]
    assert [r["format"] for r in rows] == ["torch", "onnx"]
    bad = runner.invoke(app, ["train", str(recipe), "--set", "model.params.width=0"])
    assert bad.exit_code == 2 and "model.params.width" in bad.stderr  # its params are checked like any family's
