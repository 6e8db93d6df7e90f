"""Say what ran, run what was asked: model resolution, stale exports, data provenance, shell pipelines,
TensorBoard and the recipe keys the Keras families now honour."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import env, tiny_recipe_dict, write_recipe
from typer.testing import CliRunner

from vidcli.cli.main import app

pytestmark = pytest.mark.slow  # needs the session's trained tiny run
runner = CliRunner()


def _state(run: Path, **changes) -> None:
    f = run / "run.json"
    f.write_text(json.dumps({**json.loads(f.read_text()), **changes}))


def _clip(tiny_data: Path) -> Path:
    return sorted((tiny_data / "test").rglob("*.avi"))[0]


def test_default_model_is_the_newest_finished_run_and_it_is_named(run_copy, tiny_data, tmp_path):
    runs_dir = run_copy.parents[1]
    newer = runs_dir / "tiny" / "2"
    shutil.copytree(run_copy, newer)
    _state(newer, status="interrupted", epochs_done=1)  # newer, but interrupted: never chosen silently
    result = runner.invoke(app, ["predict", str(_clip(tiny_data)), "--runs-dir", str(runs_dir), "--json"])
    assert result.exit_code == 0, result.stderr
    assert f"model: {run_copy / 'best.keras'} (run {run_copy}" in result.stderr
    assert json.loads(result.stdout)["model"] == str(run_copy / "best.keras")
    _state(run_copy, status="interrupted")
    none = runner.invoke(app, ["predict", str(_clip(tiny_data)), "--runs-dir", str(runs_dir)])
    assert none.exit_code == 2 and "no finished run" in none.stderr and "interrupted" in none.stderr


def test_model_option_uses_exactly_what_it_names(run_copy, tiny_onnx, tiny_data):
    shutil.copyfile(tiny_onnx, run_copy / "model.onnx")
    clip = str(_clip(tiny_data))
    by_run = runner.invoke(app, ["predict", clip, "-m", str(run_copy), "--json"])
    assert json.loads(by_run.stdout)["model"] == str(run_copy / "model.onnx")
    by_ckpt = runner.invoke(app, ["predict", clip, "-m", str(run_copy / "last.keras"), "--json"])
    assert by_ckpt.exit_code == 0 and json.loads(by_ckpt.stdout)["model"] == str(run_copy / "last.keras")
    assert "last.keras" in by_ckpt.stderr.splitlines()[0]


def test_an_export_older_than_its_checkpoint_warns(run_copy, tiny_data):
    runner.invoke(app, ["export-onnx", str(run_copy), "--quiet"])
    clip = str(_clip(tiny_data))
    fresh = runner.invoke(app, ["predict", clip, "-m", str(run_copy)])
    assert fresh.exit_code == 0 and "warning" not in fresh.stderr
    meta = {p.key: p.value for p in __import__("onnx").load(str(run_copy / "model.onnx")).metadata_props}
    assert meta["checkpoint"] == "best.keras" and len(meta["checkpoint_sha256"]) == 64
    (run_copy / "best.keras").write_bytes((run_copy / "last.keras").read_bytes() + b"")  # the run trained on
    (run_copy / "best.keras").touch()
    stale = runner.invoke(app, ["predict", clip, "-m", str(run_copy)])
    assert stale.exit_code == 0 and "exported from an earlier best.keras" in stale.stderr


def test_eval_of_the_export_equals_eval_of_the_run_and_records_what_it_scored(run_copy):
    runner.invoke(app, ["export-onnx", str(run_copy), "--quiet"])
    framework = json.loads(runner.invoke(app, ["eval", str(run_copy), "--json"]).stdout)
    exported = json.loads(runner.invoke(app, ["eval", str(run_copy / "model.onnx"), "--json"]).stdout)
    assert exported["top1"] == framework["top1"] and exported["loss"] == pytest.approx(framework["loss"], abs=1e-4)
    last = json.loads(runner.invoke(app, ["eval", str(run_copy), "--checkpoint", "last", "--json"]).stdout)
    metrics = json.loads((run_copy / "metrics.json").read_text())
    assert {"test", "test_model.onnx", "test_last"} <= set(metrics)
    assert metrics["test"]["checkpoint"] == "best.keras" and metrics["test_last"]["checkpoint"] == "last.keras"
    assert last["model"].endswith("last.keras") and (last["clips"], last["crops"]) == (1, 1)


def test_eval_of_a_file_outside_a_run_needs_data(tiny_onnx, tiny_data, tmp_path):
    alone = tmp_path / "m.onnx"
    shutil.copyfile(tiny_onnx, alone)
    refused = runner.invoke(app, ["eval", str(alone)])
    assert refused.exit_code == 2 and "--data" in refused.stderr
    ok = runner.invoke(app, ["eval", str(alone), "--data", str(tiny_data), "--json"])
    assert ok.exit_code == 0, ok.stderr
    assert json.loads(ok.stdout)["num_samples"] == 6 and (tmp_path / "m.onnx.eval" / "metrics.json").is_file()


def test_eval_warns_when_the_data_changed_since_training(run_copy, tiny_data, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    recipe = run_copy / "recipe.yaml"
    recipe.write_text(recipe.read_text().replace(str(tiny_data), str(data)))
    _state(run_copy, data={**json.loads((run_copy / "run.json").read_text())["data"], "root": str(data.resolve())})
    same = runner.invoke(app, ["eval", str(run_copy)])
    assert same.exit_code == 0 and "changed" not in same.stderr
    victim = sorted((data / "test").rglob("*.avi"))[0]
    victim.unlink()
    changed = runner.invoke(app, ["eval", str(run_copy)])
    assert changed.exit_code == 0 and "changed since" in changed.stderr
    assert "test: 6 clips then, 5 now" in changed.stderr


def test_recipe_synth_settings_that_disagree_with_the_data_are_refused(tmp_path):
    root = tmp_path / "synth"
    raw = {"name": "s", "data": {"root": str(root), "frames": 4, "size": [32, 32],
                                 "synth": {"classes": 3, "train": 2, "val": 1, "test": 1, "frames": 8, "size": 32}},
           "model": {"arch": "r2plus1d", "params": {"filters": [4, 8]}}, "train": {"epochs": 1}}
    from vidcli.datasets.synth import write_synth_videos

    write_synth_videos(root, classes=2, counts={"train": 2, "val": 1, "test": 1}, frames=8, size=32)
    result = runner.invoke(app, ["train", str(write_recipe(tmp_path / "s.yaml", raw)), "--runs-dir",
                                 str(tmp_path / "runs")])
    assert result.exit_code == 2 and not (tmp_path / "runs").exists()
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("error: data.synth:") and "made with other settings (classes: [" in line
    assert line.count("there") == 1 and line.count("asked") == 1 and "--force" in line


def test_predict_reads_paths_from_stdin_and_partial_failure_exits_3(tiny_onnx, tiny_data, tmp_path):
    good = [str(p) for p in sorted((tiny_data / "test").rglob("*.avi"))[:2]]
    bad = tmp_path / "bad.avi"
    bad.write_text("x")
    stdin = "\n".join([good[0], str(bad), "", good[1]]) + "\n"
    proc = subprocess.run([sys.executable, "-m", "vidcli", "predict", "-", "-m", str(tiny_onnx), "--json", "-q"],
                          input=stdin, capture_output=True, text=True, env=env(), timeout=120)
    assert proc.returncode == 3, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["source"] for r in rows] == [good[0], str(bad), good[1]] and "error" in rows[1]
    assert proc.stderr.count("error:") == 1 and "model:" not in proc.stderr  # --quiet keeps errors only


def test_tensorboard_scalars_per_epoch_and_evaluation_images(tiny_data, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    recipe = write_recipe(tmp_path / "tb.yaml", tiny_recipe_dict(tiny_data, epochs=2, tensorboard=True))
    out = json.loads(runner.invoke(app, ["train", str(recipe), "--runs-dir", str(tmp_path / "runs"), "--json",
                                         "-q"]).stdout)
    run = Path(out["run"])
    assert runner.invoke(app, ["confusion", str(run), "-q"]).exit_code == 0
    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0})
    acc.Reload()
    assert {"loss", "val_accuracy", "lr"} <= set(acc.Tags()["scalars"])
    assert [e.step for e in acc.Scalars("loss")] == [1, 2]  # epochs numbered as in history.csv
    assert acc.Tags()["images"] == ["confusion/confusion_test"]


def test_keras_honours_sgd_momentum_and_clipping(tiny_data, tmp_path):
    from vidcli.backends.keras.backend import load_model

    raw = tiny_recipe_dict(tiny_data, epochs=1, optimizer="sgd", momentum=0.8, clip_grad_norm=2.0,
                           tensorboard=False)
    out = json.loads(runner.invoke(app, ["train", str(write_recipe(tmp_path / "sgd.yaml", raw)), "--runs-dir",
                                         str(tmp_path / "runs"), "--json", "-q"]).stdout)
    opt = load_model(Path(out["run"]) / "last.keras", "r2plus1d").optimizer.get_config()
    assert (opt["name"], opt["momentum"], opt["global_clipnorm"]) == ("sgd", pytest.approx(0.8), 2.0)


def test_keras_run_with_segment_sampling_takes_clips_and_crops(tiny_data, tmp_path):
    raw = tiny_recipe_dict(tiny_data, epochs=1, tensorboard=False)
    raw["data"].pop("frame_step")
    raw["data"]["sampling"] = "segments"
    out = json.loads(runner.invoke(app, ["train", str(write_recipe(tmp_path / "seg.yaml", raw)), "--runs-dir",
                                         str(tmp_path / "runs"), "--json", "-q"]).stdout)
    result = runner.invoke(app, ["eval", out["run"], "--clips", "2", "--crops", "3", "--json"])
    assert result.exit_code == 0, result.stderr  # a traceback before: predict_source() got 'clips'
    assert (json.loads(result.stdout)["clips"], json.loads(result.stdout)["crops"]) == (2, 3)


def test_resume_refuses_what_would_not_do_what_it_says(run_copy, tiny_data, tmp_path):
    """A recipe with --resume, a checkpoint of another model, a truncated checkpoint with --set: one line, exit 2,
    the run untouched (recipe.yaml, history and checkpoints as they were)."""
    before = {p.name: p.read_bytes() for p in run_copy.iterdir() if p.is_file()}
    recipe = write_recipe(tmp_path / "r.yaml", tiny_recipe_dict(tiny_data))
    both = runner.invoke(app, ["train", str(recipe), "--resume", str(run_copy)])
    assert both.exit_code == 2 and "not both" in both.stderr
    other = tiny_recipe_dict(tiny_data, epochs=1, tensorboard=False)
    other["model"]["params"]["filters"] = [8, 8]
    out = json.loads(runner.invoke(app, ["train", str(write_recipe(tmp_path / "o.yaml", other)), "--runs-dir",
                                         str(tmp_path / "runs"), "--json", "-q"]).stdout)
    last = run_copy / "last.keras"
    last.write_bytes((Path(out["run"]) / "last.keras").read_bytes())  # another model's checkpoint
    swapped = runner.invoke(app, ["train", "--resume", str(run_copy), "--set", "train.epochs=3"])
    assert swapped.exit_code == 2 and "the checkpoint holds another model" in swapped.stderr
    assert "filters=[8, 8]" in swapped.stderr and "Traceback" not in swapped.stderr
    last.write_bytes(before["last.keras"][:1000])  # truncated
    cut = runner.invoke(app, ["train", "--resume", str(run_copy), "--set", "data.size=[64, 64]"])
    assert cut.exit_code == 2 and "last.keras" in cut.stderr and "Traceback" not in cut.stderr
    after = {p.name: p.read_bytes() for p in run_copy.iterdir() if p.is_file()}
    assert after["recipe.yaml"] == before["recipe.yaml"] and after["history.csv"] == before["history.csv"]


def test_threads_reach_a_checkpoint_run_by_its_framework(run_copy, tiny_data, monkeypatch):
    from vidcli.backends.keras.backend import KerasBackend

    asked: list[int] = []
    monkeypatch.setattr(KerasBackend, "set_threads", lambda self, n: asked.append(n))
    args = ["predict", str(_clip(tiny_data)), "-m", str(run_copy / "best.keras"), "--json"]
    result = runner.invoke(app, [*args, "--threads", "1"])
    assert result.exit_code == 0, result.stderr
    assert asked == [1]
    assert runner.invoke(app, args).exit_code == 0 and asked == [1]  # unset: the framework's own pools


def test_keras_weight_decay_spares_vectors_in_a_fresh_and_a_resumed_run(tiny_data, tmp_path):
    """As the PyTorch backend: decay on weights, not on biases and normalisation parameters, also after resume."""
    import numpy as np

    from vidcli import recipe as recipe_mod
    from vidcli.backends.keras.backend import KerasBackend, compile_model, save

    path = write_recipe(tmp_path / "wd.yaml", tiny_recipe_dict(tiny_data, epochs=1, learning_rate=0.1,
                                                               weight_decay=0.5))
    rec = recipe_mod.load(path)
    backend = KerasBackend()

    def step_decays_only_weights(model):
        before = [np.array(v) for v in model.trainable_variables]
        model.optimizer.apply_gradients([(np.zeros(v.shape, np.float32), v) for v in model.trainable_variables])
        for v, b in zip(model.trainable_variables, before, strict=True):
            factor = 1.0 if len(v.shape) <= 1 else 1 - 0.1 * 0.5  # AdamW: w -= lr * wd * w; zero grads move nothing
            np.testing.assert_allclose(np.array(v), b * factor, rtol=1e-5, atol=1e-7, err_msg=v.path)

    fresh = backend.build(rec, 3, (4, 32, 32, 3))
    compile_model(fresh, rec.train)
    step_decays_only_weights(fresh)
    save(fresh, tmp_path / "last.keras", {"epoch": 1})
    resumed = backend.resume_model(tmp_path / "last.keras", rec, 3)
    assert int(resumed.optimizer.iterations.numpy()) == 1  # the saved optimizer state, loaded in
    step_decays_only_weights(resumed)
