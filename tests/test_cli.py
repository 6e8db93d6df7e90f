"""CLI behaviour: exit codes, one-line errors, --debug, --json purity, and no framework import where none is needed."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import VIDEOS, one_error_line, tiny_recipe_dict, vidcli, write_recipe
from conftest import env as _env
from typer.testing import CliRunner

from vidcli import __version__
from vidcli.cli.main import app

# Runs the CLI like `python -m vidcli`, then reports which frameworks ended up imported.
PROBE = """
import runpy, sys
sys.argv = ["vidcli", *sys.argv[1:]]
code = 0
try:
    runpy.run_module("vidcli", run_name="__main__")
except SystemExit as exc:
    code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
loaded = [m for m in ("tensorflow", "torch", "keras", "jax") if m in sys.modules]
sys.stderr.write("IMPORTED:" + ",".join(loaded) + "\\n")
sys.exit(code)
"""


def probe(*args: str, cwd: Path | None = None) -> tuple[subprocess.CompletedProcess, list[str]]:
    """Run the CLI in a fresh interpreter; return the process and the frameworks it imported."""
    proc = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, cwd=cwd,
                          env=_env(), timeout=300)
    last = proc.stderr.rstrip().splitlines()[-1]
    assert last.startswith("IMPORTED:"), proc.stderr
    proc.stderr = proc.stderr.rstrip()[: -len(last)]
    return proc, [m for m in last[len("IMPORTED:"):].split(",") if m]


runner = CliRunner()


# --- version, help, imports ------------------------------------------------------------------


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout.strip() == f"vidcli {__version__}"
    proc = vidcli("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"vidcli {__version__}"


@pytest.mark.parametrize("args", [["--help"], ["data", "--help"], ["train", "--help"], ["predict", "--help"],
                                  ["export-onnx", "--help"], ["benchmark", "--help"]])
def test_help_imports_no_framework(args):
    proc, loaded = probe(*args)
    assert proc.returncode == 0, proc.stderr
    assert "Usage" in proc.stdout
    assert loaded == []


def test_help_lists_every_command():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for cmd in ("train", "eval", "confusion", "precision-recall", "export-onnx", "predict", "data", "benchmark"):
        assert cmd in result.stdout


@pytest.mark.slow  # needs the session's trained model
def test_predict_with_onnx_imports_no_framework(tiny_onnx, tiny_data, tmp_path):
    clip = next((tiny_data / "test").rglob("*.avi"))
    proc, loaded = probe("predict", str(clip), "--model", str(tiny_onnx), "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert loaded == []
    result = json.loads(proc.stdout)
    assert result["source"] == str(clip) and len(result["top_k"]) == 3


def test_data_synth_imports_no_framework(tmp_path):
    proc, loaded = probe("data", "synth", "--out", str(tmp_path / "s"), "--classes", "2", "--train", "1",
                         "--val", "0", "--test", "0", "--frames", "2", "--size", "16", "--json")
    assert proc.returncode == 0, proc.stderr
    assert loaded == []
    assert json.loads(proc.stdout)["path"] == str(tmp_path / "s")


@pytest.mark.parametrize("command", ["synth", "fetch-ucf101", "kinetics-frames", "medmnist"])
def test_data_command_help_has_quiet_and_ends_with_examples(command):
    result = runner.invoke(app, ["data", command, "--help"])
    assert result.exit_code == 0 and "--quiet" in result.stdout
    assert result.stdout[result.stdout.rindex("Examples:"):].count(f"vidcli data {command}") >= 3


def test_data_kinetics_partial_failure_exits_3_and_quiet_keeps_only_errors(tmp_path):
    src = tmp_path / "clips" / "archery"
    src.mkdir(parents=True)
    shutil.copy(VIDEOS / "tree.avi", src / "good.avi")
    (src / "broken.avi").write_bytes(b"RIFF" + bytes(300))
    result = runner.invoke(app, ["data", "kinetics-frames", str(src.parent), "--out", str(tmp_path / "o"), "-q"])
    assert result.exit_code == 3 and result.stdout == ""
    assert "broken.avi" in one_error_line(result.stderr)
    (src / "good.avi").unlink()
    result = runner.invoke(app, ["data", "kinetics-frames", str(src.parent), "--out", str(tmp_path / "p"), "-q"])
    assert result.exit_code == 1 and len([x for x in result.stderr.splitlines() if x.startswith("error: ")]) == 2


# --- errors ----------------------------------------------------------------------------------


def test_user_error_is_one_line_exit_2(tmp_path):
    proc = vidcli("train", str(tmp_path / "nope.yaml"))
    assert proc.returncode == 2
    line = one_error_line(proc.stderr)
    assert "nope.yaml" in line and "not found" in line
    assert proc.stdout == ""


def test_failure_is_one_line_exit_1(tmp_path):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    proc = vidcli("data", "synth", "--out", str(blocker / "x"), "--classes", "2", "--train", "1", "--val", "0",
                  "--test", "0", "--frames", "2", "--size", "16")
    assert proc.returncode == 1
    assert "cannot write" in one_error_line(proc.stderr)


def test_debug_shows_the_traceback(tmp_path):
    proc = vidcli("--debug", "train", str(tmp_path / "nope.yaml"))
    assert proc.returncode == 2
    assert "Traceback" in proc.stderr and "VidcliError" in proc.stderr
    assert proc.stderr.rstrip().splitlines()[-1].startswith("error: ")


def test_cli_runner_error_goes_to_stderr(tmp_path):
    result = runner.invoke(app, ["train", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2
    assert result.stdout == ""
    one_error_line(result.stderr)


def _train_error(tmp_path: Path, raw: dict, *extra: str, only: bool = True) -> str:
    recipe = write_recipe(tmp_path / "r.yaml", raw)
    runs_dir = tmp_path / "runs"
    result = runner.invoke(app, ["train", str(recipe), "--runs-dir", str(runs_dir), *extra])
    assert result.exit_code == 2, result.stderr + repr(result.exception)
    assert not runs_dir.exists() or not any(runs_dir.rglob("run.json")), "a failed train left a run folder"
    assert not runs_dir.exists() or not [p for p in runs_dir.glob("*/*") if p.is_dir()]
    return one_error_line(result.stderr, only)


def test_train_unknown_key(tmp_path, tiny_data):
    raw = tiny_recipe_dict(tiny_data)
    raw["train"]["epoch"] = 3
    line = _train_error(tmp_path, raw)
    assert "train.epoch" in line and "'epochs'" in line


def test_train_wrong_type(tmp_path, tiny_data):
    raw = tiny_recipe_dict(tiny_data)
    raw["train"]["batch_size"] = "big"
    assert "train.batch_size" in _train_error(tmp_path, raw)


def test_train_bad_set(tmp_path, tiny_data):
    line = _train_error(tmp_path, tiny_recipe_dict(tiny_data), "--set", "data.frame=3")
    assert "data.frame" in line and "'frames'" in line


def test_train_unknown_model_param(tmp_path, tiny_data):
    raw = tiny_recipe_dict(tiny_data)
    raw["model"]["params"]["x"] = 1
    assert "model.params.x" in _train_error(tmp_path, raw)


def test_train_unknown_arch(tmp_path, tiny_data):
    raw = tiny_recipe_dict(tiny_data)
    raw["model"]["arch"] = "r2plus1"
    line = _train_error(tmp_path, raw)
    assert "model.arch" in line and "r2plus1d" in line


def test_train_missing_data_folder(tmp_path):
    line = _train_error(tmp_path, tiny_recipe_dict(tmp_path / "no_data"))
    assert "data.root" in line and "no_data" in line


def test_train_missing_data_folder_subprocess(tmp_path):
    """The whole stderr is the one line: nothing (not even a framework's start-up chatter) before it."""
    recipe = write_recipe(tmp_path / "r.yaml", tiny_recipe_dict(tmp_path / "no_data"))
    proc = vidcli("train", str(recipe), "--runs-dir", str(tmp_path / "runs"))
    assert proc.returncode == 2
    assert "data.root" in one_error_line(proc.stderr)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("run.json"))


def test_train_size_not_divisible(tmp_path, tiny_data):
    raw = tiny_recipe_dict(tiny_data)
    raw["data"]["size"] = [30, 30]
    assert "data.size" in _train_error(tmp_path, raw, only=False)  # found when the model is built


def test_train_without_recipe():
    result = runner.invoke(app, ["train"])
    assert result.exit_code == 2
    assert "recipe" in one_error_line(result.stderr)


def test_resume_on_a_folder_that_is_not_a_run(tmp_path):
    (tmp_path / "plain").mkdir()
    result = runner.invoke(app, ["train", "--resume", str(tmp_path / "plain")])
    assert result.exit_code == 2
    assert "not a vidcli run folder" in one_error_line(result.stderr)
    result = runner.invoke(app, ["train", "--resume", str(tmp_path / "missing")])
    assert result.exit_code == 2
    assert "missing" in one_error_line(result.stderr)


@pytest.mark.slow  # needs the session's trained model
def test_resume_without_checkpoint(tmp_path, run_copy):
    for name in ("last.keras", "best.keras"):
        (run_copy / name).unlink()
    result = runner.invoke(app, ["train", "--resume", str(run_copy)])
    assert result.exit_code == 2
    assert "no last checkpoint" in one_error_line(result.stderr)


def test_eval_on_non_run(tmp_path):
    result = runner.invoke(app, ["eval", str(tmp_path)])
    assert result.exit_code == 2
    assert "not a vidcli run folder" in one_error_line(result.stderr)


# --- predict -----------------------------------------------------------------------------------


@pytest.mark.slow  # needs the session's trained model
def test_predict_run_without_labels(run_copy, tiny_data):
    (run_copy / "labels.json").unlink()
    clip = next((tiny_data / "test").rglob("*.avi"))
    result = runner.invoke(app, ["predict", str(clip), "--model", str(run_copy)])
    assert result.exit_code == 2
    line = one_error_line(result.stderr)
    assert "labels" in line and str(run_copy) in line


def test_predict_default_model_without_runs(tmp_path, tiny_data):
    clip = next((tiny_data / "test").rglob("*.avi"))
    result = runner.invoke(app, ["predict", str(clip), "--runs-dir", str(tmp_path / "runs")])
    assert result.exit_code == 2
    assert "no runs found" in one_error_line(result.stderr)


def test_predict_missing_model_file(tmp_path, tiny_data):
    clip = next((tiny_data / "test").rglob("*.avi"))
    result = runner.invoke(app, ["predict", str(clip), "--model", str(tmp_path / "x.onnx")])
    assert result.exit_code == 2
    assert "x.onnx" in one_error_line(result.stderr)


@pytest.mark.slow  # needs the session's trained model
def test_predict_onnx_without_metadata(tmp_path, tiny_onnx, tiny_data):
    import onnx

    proto = onnx.load(str(tiny_onnx))
    del proto.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    onnx.save(proto, str(bare))
    clip = next((tiny_data / "test").rglob("*.avi"))
    result = runner.invoke(app, ["predict", str(clip), "--model", str(bare)])
    assert result.exit_code == 2
    assert "labels" in one_error_line(result.stderr)


@pytest.mark.slow  # needs the session's trained model
def test_predict_corrupt_among_good(tmp_path, tiny_onnx, tiny_data):
    good = sorted((tiny_data / "test").rglob("*.avi"))[:2]
    bad = tmp_path / "broken.avi"
    bad.write_text("not a video")
    empty = tmp_path / "empty.mp4"
    empty.touch()
    args = [str(good[0]), str(bad), str(good[1]), str(empty)]
    result = runner.invoke(app, ["predict", *args, "--model", str(tiny_onnx), "--json", "--top-k", "2"])
    assert result.exit_code == 3  # some inputs failed, the others were classified
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["source"] for r in rows] == args
    assert "top_k" in rows[0] and "top_k" in rows[2]
    assert "error" in rows[1] and "error" in rows[3]
    assert len(rows[0]["top_k"]) == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[0].startswith(f"model: {tiny_onnx}")  # which model answered, named once
    errors = lines[1:]
    assert len(errors) == 2 and all(e.startswith("error: ") for e in errors)
    assert "broken.avi" in errors[0] and "empty.mp4" in errors[1]


@pytest.mark.slow  # needs the session's trained model
def test_predict_plain_output_and_folder(tiny_onnx, tiny_data):
    result = runner.invoke(app, ["predict", str(tiny_data / "test"), "--model", str(tiny_onnx), "-k", "1"])
    assert result.exit_code == 0, result.stderr
    clips = sorted((tiny_data / "test").rglob("*.avi"))
    for clip in clips:
        assert str(clip) in result.stdout
    assert result.stdout.count("%") == len(clips)


@pytest.mark.slow  # needs the session's trained model
def test_predict_json_is_pure_subprocess(tiny_onnx, tiny_data, tmp_path):
    proc = vidcli("predict", str(tiny_data / "test"), "--model", str(tiny_onnx), "--json", "--clips", "2",
                  cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(rows) == 6
    for row in rows:
        assert set(row) >= {"source", "top_k", "model"} and row["clips"] == 2
        assert abs(sum(t["probability"] for t in row["top_k"]) - 1) < 1e-3


def test_predict_glob_without_match(tmp_path):
    result = runner.invoke(app, ["predict", str(tmp_path / "*.mp4"), "--model", str(tmp_path / "m.onnx")])
    assert result.exit_code == 2
    assert "no files match" in one_error_line(result.stderr)


def test_export_of_non_run(tmp_path):
    shutil.rmtree(tmp_path, ignore_errors=True)
    result = runner.invoke(app, ["export-onnx", str(tmp_path)])
    assert result.exit_code == 2
    assert "not found" in one_error_line(result.stderr)


@pytest.mark.parametrize("folder", ["[red]", "[/x]"])
def test_error_messages_with_brackets_are_text(tmp_path, folder):
    """Paths are not Rich markup: '[red]' stays in the message and '[/x]' does not crash the error line."""
    missing = tmp_path / folder / "r.yaml"
    result = runner.invoke(app, ["train", str(missing)])
    assert result.exit_code == 2, repr(result.exception)
    assert str(missing) in one_error_line(result.stderr)


@pytest.mark.slow  # needs the session's trained model
def test_predict_error_with_brackets_in_path(tmp_path, tiny_onnx):
    folder = tmp_path / "[" / "x]"  # the message holds "[/x]"
    folder.mkdir(parents=True)
    (folder / "bad.avi").write_text("nope")
    result = runner.invoke(app, ["predict", str(folder), "--model", str(tiny_onnx)])
    assert result.exit_code == 2, repr(result.exception)
    assert str(folder / "bad.avi") in one_error_line(result.stderr, only=False)


@pytest.mark.parametrize(("args", "named"), [
    (["--stream", "--clips", "2"], "--clips"),
    (["--stream", "--batch", "4"], "--batch"),
    (["--stream", "--index", "1"], "--index"),
])
def test_stream_predict_refuses_options_it_would_ignore(args, named, tmp_path):
    result = runner.invoke(app, ["predict", str(tmp_path / "x.mp4"), *args])
    assert result.exit_code == 2 and named in one_error_line(result.stderr) and "--stream" in result.stderr


def test_export_of_a_recipe_refuses_checkpoint(tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", {"name": "r", "model": {"arch": "r2plus1d"}})
    result = runner.invoke(app, ["export-onnx", str(recipe), "--checkpoint", "last"])
    assert result.exit_code == 2 and "--checkpoint" in one_error_line(result.stderr)


@pytest.mark.parametrize(("args", "named"), [
    (["--split", "val"], "--split"),
    (["--runs-dir", "runs", "-m", "model.onnx"], "--runs-dir"),
])
def test_predict_refuses_options_that_would_do_nothing(args, named, tmp_path):
    result = runner.invoke(app, ["predict", str(tmp_path / "x.mp4"), *args])
    assert result.exit_code == 2 and named in one_error_line(result.stderr)
