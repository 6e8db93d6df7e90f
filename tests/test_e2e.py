"""End to end on the tiny dataset: train -> eval/confusion/PR -> export -> predict, interrupt + resume, bad clips."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import one_error_line, tiny_recipe_dict, vidcli, write_recipe
from typer.testing import CliRunner

from vidcli.cli.main import app

pytestmark = pytest.mark.slow
runner = CliRunner()
RUN_FILES = ("recipe.yaml", "labels.json", "best.keras", "last.keras", "history.csv", "env.json", "run.json",
             "training_curves.png")


def _history(run: Path) -> list[dict]:
    with open(run / "history.csv", newline="") as f:
        return list(csv.DictReader(f))


def _state(run: Path) -> dict:
    return json.loads((run / "run.json").read_text())


def _train(recipe: Path, runs_dir: Path, *extra: str):
    return runner.invoke(app, ["train", str(recipe), "--runs-dir", str(runs_dir), *extra])


def _weights(path: Path) -> list[np.ndarray]:
    import keras

    import vidcli.backends.keras.r2plus1d  # noqa: F401  (registers the layers)

    return [np.asarray(w) for w in keras.saving.load_model(path, compile=False).get_weights()]


def test_train_makes_a_complete_run_folder(tiny_run):
    for name in RUN_FILES:
        assert (tiny_run / name).is_file(), name
    assert (tiny_run / "tensorboard").is_dir() and any((tiny_run / "tensorboard").rglob("*tfevents*"))
    rows = _history(tiny_run)
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert all(np.isfinite(float(r["loss"])) for r in rows)
    state = _state(tiny_run)
    assert state["status"] == "finished" and state["epochs_done"] == 2
    assert json.loads((tiny_run / "labels.json").read_text()) == ["left", "right", "up"]
    assert json.loads((tiny_run / "env.json").read_text())["seed"] == 0
    assert not [p for p in tiny_run.rglob("*") if ".partial-" in p.name]


def test_eval_confusion_precision_recall(run_copy):
    result = runner.invoke(app, ["eval", str(run_copy), "--json"])
    assert result.exit_code == 0, result.stderr
    metrics = json.loads(result.stdout)
    assert {"top1", "top5", "mean_class_accuracy", "loss"} <= set(metrics)
    assert 0 <= metrics["top1"] <= 1 and metrics["top5"] == 1.0  # 3 classes: top-5 always hits
    cache = run_copy / "predictions" / "test.npz"
    mtime = cache.stat().st_mtime_ns
    assert json.loads((run_copy / "metrics.json").read_text())["test"]["top1"] == metrics["top1"]

    proc = vidcli("eval", str(run_copy), "--json")  # cached: the same numbers, JSON alone on stdout
    assert proc.returncode == 0, proc.stderr
    again = json.loads(proc.stdout)
    assert again["top1"] == metrics["top1"] and again["loss"] == pytest.approx(metrics["loss"])
    assert cache.stat().st_mtime_ns == mtime

    result = runner.invoke(app, ["confusion", str(run_copy)])
    assert result.exit_code == 0, result.stderr
    for name in ("confusion_test.png", "confusion_test_normalized.png", "confusion_test.csv"):
        assert (run_copy / name).stat().st_size > 0, name
    rows = list(csv.reader((run_copy / "confusion_test.csv").read_text().splitlines()))
    assert rows[0][1:] == ["left", "right", "up"] and [r[0] for r in rows[1:]] == ["left", "right", "up"]
    assert sum(int(v) for r in rows[1:] for v in r[1:]) == 6
    assert cache.stat().st_mtime_ns == mtime

    result = runner.invoke(app, ["precision-recall", str(run_copy), "--json"])
    assert result.exit_code == 0, result.stderr
    pr = json.loads(result.stdout)
    assert [r["class"] for r in pr["rows"]][:3] == ["left", "right", "up"]
    assert all({"precision", "recall", "f1", "support"} <= set(r) for r in pr["rows"])
    assert Path(pr["png"]).is_file() and (run_copy / "precision_recall_test.csv").is_file()

    result = runner.invoke(app, ["eval", str(run_copy), "--split", "val"])
    assert result.exit_code == 0, result.stderr
    assert "top1" in result.stdout and (run_copy / "predictions" / "val.npz").is_file()


def test_export_and_predict(run_copy, tiny_data):
    import onnx

    result = runner.invoke(app, ["export-onnx", str(run_copy)])
    assert result.exit_code == 0, result.stderr
    model = run_copy / "model.onnx"
    assert "max abs diff" in result.stdout and "parity" in result.stderr
    meta = {p.key: p.value for p in onnx.load(str(model)).metadata_props}
    assert json.loads(meta["labels"]) == ["left", "right", "up"]
    assert meta["frames"] == "4" and meta["frame_step"] == "2" and json.loads(meta["size"]) == [32, 32]
    assert set(json.loads(meta["normalization"])) >= {"scale", "mean", "std"}

    clip = sorted((tiny_data / "test" / "up").glob("*.avi"))[0]
    proc = vidcli("predict", str(clip), "--model", str(model), "--json")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 1
    row = json.loads(lines[0])
    assert row["source"] == str(clip) and row["model"] == str(model)
    assert {t["label"] for t in row["top_k"]} == {"left", "right", "up"}

    runs_dir = run_copy.parents[1]
    result = runner.invoke(app, ["predict", str(clip), "--runs-dir", str(runs_dir), "--json", "-k", "1"])
    assert result.exit_code == 0, result.stderr
    default = json.loads(result.stdout)
    assert default["model"] == str(model)  # the newest run's exported model
    assert default["top_k"][0] == row["top_k"][0]


def test_predict_run_without_onnx_uses_its_framework(run_copy, tiny_onnx, tiny_data):
    clip = sorted((tiny_data / "test" / "left").glob("*.avi"))[0]
    result = runner.invoke(app, ["predict", str(clip), "--model", str(run_copy), "--json"])
    assert result.exit_code == 0, result.stderr
    framework = json.loads(result.stdout)
    result = runner.invoke(app, ["predict", str(clip), "--model", str(tiny_onnx), "--json"])
    onnx_row = json.loads(result.stdout)
    for a, b in zip(framework["top_k"], onnx_row["top_k"], strict=True):
        assert a["label"] == b["label"] and a["probability"] == pytest.approx(b["probability"], abs=1e-4)


@pytest.fixture
def interrupt_after_first_epoch(monkeypatch):
    """Ctrl-C right after epoch 1 has been checkpointed, as a user pressing it would do."""
    from vidcli.backends.keras import backend

    original = backend.RunCallback.on_epoch_end

    def on_epoch_end(self, epoch, logs=None):
        original(self, epoch, logs)
        if epoch == 0:
            raise KeyboardInterrupt

    monkeypatch.setattr(backend.RunCallback, "on_epoch_end", on_epoch_end)
    return monkeypatch


def test_interrupt_and_resume_matches_uninterrupted(tmp_path, tiny_data, tiny_run, interrupt_after_first_epoch):
    """The same recipe as `tiny_run` (2 epochs), Ctrl-C after epoch 1, then --resume: the same weights."""
    recipe = write_recipe(tmp_path / "tiny.yaml", tiny_recipe_dict(tiny_data))
    runs_dir = tmp_path / "runs"
    result = _train(recipe, runs_dir)
    assert result.exit_code == 130, result.stderr + repr(result.exception)
    run = runs_dir / "tiny" / "1"
    assert "interrupted" in one_error_line(result.stderr, only=False) and "--resume" in result.stderr
    assert (run / "last.keras").is_file()
    state = _state(run)
    assert state["status"] == "interrupted" and state["epochs_done"] == 1
    assert [int(r["epoch"]) for r in _history(run)] == [1]

    interrupt_after_first_epoch.undo()
    result = runner.invoke(app, ["train", "--resume", str(run)])
    assert result.exit_code == 0, result.stderr + repr(result.exception)
    assert [int(r["epoch"]) for r in _history(run)] == [1, 2]
    state = _state(run)
    assert state["status"] == "finished" and state["epochs_done"] == 2
    assert not (runs_dir / "tiny" / "2").exists(), "resume must not make a new run"

    assert [r["loss"] for r in _history(tiny_run)] == [r["loss"] for r in _history(run)]
    resumed, uninterrupted = _weights(run / "last.keras"), _weights(tiny_run / "last.keras")
    diff = max(float(np.abs(a - b).max()) for a, b in zip(resumed, uninterrupted, strict=True))
    assert diff == 0.0, f"resumed weights differ from uninterrupted ones by {diff}"


def test_resume_of_a_finished_run_does_nothing(run_copy):
    before = (run_copy / "last.keras").stat().st_mtime_ns
    result = runner.invoke(app, ["train", "--resume", str(run_copy)])
    assert result.exit_code == 0, result.stderr
    assert "already done" in result.stderr
    assert (run_copy / "last.keras").stat().st_mtime_ns == before
    assert [int(r["epoch"]) for r in _history(run_copy)] == [1, 2]
    elsewhere = runner.invoke(app, ["train", "--resume", str(run_copy), "--runs-dir", str(run_copy.parent)])
    assert elsewhere.exit_code == 2 and "--resume continues the run folder it names" in elsewhere.stderr


def _corrupt_copy(src: Path, dst: Path, n_bad: int) -> list[Path]:
    shutil.copytree(src, dst)
    bad = sorted((dst / "train").rglob("*.avi"))[:n_bad]
    for p in bad:
        p.write_text("not a video any more")
    return bad


def test_many_corrupt_clips_stop_training(tmp_path, tiny_data):
    _corrupt_copy(tiny_data, tmp_path / "data", 3)  # 3 of 18 = 17%
    recipe = write_recipe(tmp_path / "tiny.yaml", tiny_recipe_dict(tmp_path / "data", epochs=1, tensorboard=False))
    result = _train(recipe, tmp_path / "runs")
    assert result.exit_code == 1, result.stderr + repr(result.exception)
    line = one_error_line(result.stderr, only=False)
    assert "failed to decode" in line and "max_bad_fraction" in line


def test_few_corrupt_clips_are_skipped(tmp_path):
    from vidcli.datasets.synth import write_synth_videos

    data = write_synth_videos(tmp_path / "data", classes=3, counts={"train": 7, "val": 1, "test": 1}, frames=8,
                              size=32, workers=2)
    bad = sorted((data / "train").rglob("*.avi"))[0]
    bad.write_text("not a video any more")  # 1 of 21 = 4.8%
    recipe = write_recipe(tmp_path / "tiny.yaml", tiny_recipe_dict(data, epochs=1, tensorboard=False))
    result = _train(recipe, tmp_path / "runs", "--json")
    assert result.exit_code == 0, result.stderr + repr(result.exception)
    assert "warning" in result.stderr and bad.name in result.stderr
    summary = json.loads(result.stdout)  # logs and warnings went to stderr
    assert summary["status"] == "finished" and summary["run"] == str(tmp_path / "runs" / "tiny" / "1")
    state = _state(tmp_path / "runs" / "tiny" / "1")
    assert state["status"] == "finished" and state["skipped_clips"] == 1


def test_real_sigint_during_training(tmp_path, tiny_data):
    """A real Ctrl-C (SIGINT to the process) mid-training: exit 130, a loadable last.keras, no partial files."""
    import signal
    import subprocess
    import sys
    import time

    from conftest import env

    raw = tiny_recipe_dict(tiny_data, epochs=60, tensorboard=False)
    recipe = write_recipe(tmp_path / "tiny.yaml", raw)
    runs_dir = tmp_path / "runs"
    proc = subprocess.Popen([sys.executable, "-m", "vidcli", "train", str(recipe), "--runs-dir", str(runs_dir)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env())
    state_file = runs_dir / "tiny" / "1" / "run.json"
    try:
        deadline = time.monotonic() + 400
        while time.monotonic() < deadline and proc.poll() is None:
            if state_file.is_file() and _state(state_file.parent).get("epochs_done", 0) >= 1:
                break
            time.sleep(0.05)
        assert proc.poll() is None, proc.communicate()[1]
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "error: interrupted" in stderr
    run = state_file.parent
    state = _state(run)
    assert state["status"] == "interrupted" and 1 <= state["epochs_done"] < 60
    # history.csv is written just before run.json, so a signal between the two leaves one extra row
    # (a known window in the Keras backend's epoch-end bookkeeping; reported, not yet closed)
    assert state["epochs_done"] <= len(_history(run)) <= state["epochs_done"] + 1
    assert len(_weights(run / "last.keras")) > 0
    assert not [p for p in run.rglob("*") if ".partial-" in p.name]


def test_a_mixed_precision_run_evaluates_resumes_and_exports(tiny_data, tmp_path):
    """Mixed precision is a training setting: the run's checkpoints load for eval and resume, the export is checked."""
    import keras

    policy = keras.mixed_precision.global_policy()
    recipe = write_recipe(tmp_path / "mixed.yaml", tiny_recipe_dict(tiny_data, epochs=1, precision="mixed_bfloat16"))
    try:
        assert _train(recipe, tmp_path / "runs").exit_code == 0
        run = tmp_path / "runs" / "tiny" / "1"
        keras.mixed_precision.set_global_policy("float32")  # as a later command starts
        done = runner.invoke(app, ["eval", str(run), "--json"])
        assert done.exit_code == 0, done.stderr
        assert 0 <= json.loads(done.stdout)["top1"] <= 1
        more = runner.invoke(app, ["train", "--resume", str(run), "--set", "train.epochs=2"])
        assert more.exit_code == 0, more.stderr
        assert [int(r["epoch"]) for r in _history(run)] == [1, 2]
        keras.mixed_precision.set_global_policy("float32")
        exported = runner.invoke(app, ["export-onnx", str(run), "--json"])
        assert exported.exit_code == 0, exported.stderr
    finally:
        keras.mixed_precision.set_global_policy(policy)
