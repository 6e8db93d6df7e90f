"""Accuracy gates: shipped quickstart recipes trained as a user trains them, to the accuracy they promise.

Marked `accuracy` (minutes each): CI runs them; skip them locally with `pytest -m "not accuracy"`.
The ViViT gate lives beside its end-to-end tests (tests/test_vivit_e2e.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vidcli.cli.main import app

pytestmark = [pytest.mark.slow, pytest.mark.accuracy]
RECIPES = Path(__file__).resolve().parents[1] / "recipes"
runner = CliRunner()


@pytest.mark.parametrize(("recipe", "gate"), [("quickstart", 0.90), ("tsm_quickstart", 0.85)])
def test_quickstart_recipe_reaches_its_gate(recipe, gate, tmp_path, monkeypatch, torch_one_thread):
    monkeypatch.chdir(tmp_path)  # the recipes generate their data under ./data
    result = runner.invoke(app, ["train", str(RECIPES / f"{recipe}.yaml"), "--runs-dir", "runs", "--json", "-q"])
    assert result.exit_code == 0, result.stderr
    run = json.loads(result.stdout)["run"]
    metrics = json.loads(runner.invoke(app, ["eval", run, "--json", "-q"]).stdout)
    assert metrics["top1"] >= gate, metrics
