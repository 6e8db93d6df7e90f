"""kill -9 at every write boundary of the end-of-epoch commit, with the real backends: `vidcli train` is killed
(SIGKILL, via the VIDCLI_FAULT test hook) right after `last`, after `best` or after history.csv of its second
epoch; `--resume` must then finish with the same history, best epoch and best weights as a run never killed."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import env, tiny_recipe_dict, write_recipe

pytestmark = pytest.mark.slow

EPOCHS = 3


def _recipe(tmp_path: Path, tiny_data: Path, backend: str) -> Path:
    raw = tiny_recipe_dict(tiny_data, epochs=EPOCHS, tensorboard=False)
    if backend == "torch":
        raw["model"] = {"arch": "tsm", "params": {"num_segments": 4, "width": 8, "layers": [1, 1, 1, 1],
                                                  "shift_div": 4}}
        raw["data"].pop("frame_step")
        raw["data"]["sampling"] = "segments"
    return write_recipe(tmp_path / f"{backend}.yaml", raw)


def _train(*args: str, fault: str | None = None) -> subprocess.CompletedProcess:
    environ = env()
    environ["OMP_NUM_THREADS"] = "1"
    if fault:
        environ["VIDCLI_FAULT"] = fault
    return subprocess.run([sys.executable, "-m", "vidcli", "train", *args], capture_output=True, text=True,
                          env=environ, timeout=600)


def _history(run: Path) -> list[dict]:
    with (run / "history.csv").open() as f:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(f)]


def _kill_after_epoch_2(run: Path, recipe: Path, runs_dir: Path, fault: str) -> subprocess.CompletedProcess:
    """Train, killed at `fault` of the second epoch (the first epoch's commit passes the same point once)."""
    first = _train(str(recipe), "--runs-dir", str(runs_dir), "--set", "train.epochs=1")
    assert first.returncode == 0, first.stderr
    return _train("--resume", str(run), "--set", f"train.epochs={EPOCHS}", fault=fault)


@pytest.mark.parametrize(("backend", "fault"), [("keras", "after-last"), ("keras", "after-best"),
                                                ("torch", "after-history")])
def test_kill_at_a_write_boundary_then_resume_loses_nothing(tmp_path, tiny_data, backend, fault):
    recipe = _recipe(tmp_path, tiny_data, backend)
    whole = _train(str(recipe), "--runs-dir", str(tmp_path / "whole"), "--json")
    assert whole.returncode == 0, whole.stderr
    ref = Path(json.loads(whole.stdout)["run"])
    run = tmp_path / "cut" / ref.parent.name / "1"
    killed = _kill_after_epoch_2(run, recipe, tmp_path / "cut", fault)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    suffix = ".keras" if backend == "keras" else ".pt"
    assert not [p for p in run.iterdir() if ".partial-" in p.name]
    resumed = _train("--resume", str(run), "--set", f"train.epochs={EPOCHS}")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stderr and ("after epoch 2" in resumed.stderr or "from epoch 2" in resumed.stderr)
    got, want = _history(run), _history(ref)
    assert [r["epoch"] for r in got] == ["1", "2", "3"]
    for a, b in zip(got, want, strict=True):
        assert {k: float(v) for k, v in a.items()} == pytest.approx({k: float(v) for k, v in b.items()}, abs=1e-5)
    state, ref_state = (json.loads((p / "run.json").read_text()) for p in (run, ref))
    assert state["best_epoch"] == ref_state["best_epoch"] and state["status"] == "finished"
    assert (run / f"best{suffix}").read_bytes() != b"" and (run / f"best{suffix}").is_file()
