"""Run folders: numbered, never overwritten, race-free, and every file in them written atomically."""

from __future__ import annotations

import contextlib
import json
import os
import stat
import sys
import threading
import time
from pathlib import Path

import pytest

from vidcli import fsio, recipe, runs
from vidcli.errors import VidcliError


def _rec(name: str = "exp", seed: int = 7) -> recipe.Recipe:
    return recipe.parse({"name": name, "train": {"seed": seed}})


def _partials(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if fsio.PARTIAL_MARK in p.name]


def test_create_auto_increments(tmp_path):
    made = [runs.create(tmp_path, "exp") for _ in range(3)]
    assert [p.name for p in made] == ["1", "2", "3"]
    assert all(p.parent == tmp_path / "exp" for p in made)


def test_create_never_reuses_or_overwrites(tmp_path):
    first = runs.create(tmp_path, "exp")
    (first / "keep.txt").write_text("mine")
    (tmp_path / "exp" / "7").mkdir()
    (tmp_path / "exp" / "notes").mkdir()  # not a number: ignored
    nxt = runs.create(tmp_path, "exp")
    assert nxt.name == "8"
    assert (first / "keep.txt").read_text() == "mine"
    assert list(nxt.iterdir()) == []


def test_names_are_separate_counters(tmp_path):
    assert runs.create(tmp_path, "a").name == "1"
    assert runs.create(tmp_path, "b").name == "1"
    assert runs.create(tmp_path, "a").name == "2"


def test_concurrent_creates_get_different_numbers(tmp_path, monkeypatch):
    """All threads see the same free number first; mkdir without exist_ok must sort them out."""
    real = runs._next_index
    barrier = threading.Barrier(8)
    waited: set[int] = set()

    def slow_index(parent):
        n = real(parent)
        if threading.get_ident() not in waited:  # only the first look is synchronised; retries run free
            waited.add(threading.get_ident())
            with contextlib.suppress(threading.BrokenBarrierError):
                barrier.wait(timeout=5)
        return n

    monkeypatch.setattr(runs, "_next_index", slow_index)
    got: list[Path] = []
    lock = threading.Lock()

    def worker():
        p = runs.create(tmp_path, "race")
        with lock:
            got.append(p)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(got) == 8
    assert sorted(int(p.name) for p in got) == list(range(1, 9))
    assert not barrier.broken, "the threads did not all race for the same number"


def test_concurrent_processes_get_different_numbers(tmp_path):
    import subprocess

    code = "import sys; from vidcli import runs; print(runs.create(sys.argv[1], 'race').name)"
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
             for _ in range(4)]
    names = [p.communicate(timeout=60)[0].strip() for p in procs]
    assert sorted(names, key=int) == ["1", "2", "3", "4"]


def test_start_writes_run_files(tmp_path):
    run = runs.start(tmp_path, _rec(), ["cat", "dog"], "keras")
    assert run.path == tmp_path / "exp" / "1"
    for name in (runs.RUN_FILE, runs.RECIPE_FILE, runs.LABELS_FILE, "env.json"):
        assert run.file(name).is_file(), name
    assert run.labels == ["cat", "dog"]
    assert run.state["status"] == "created" and run.state["epochs_done"] == 0
    assert runs.Run.open(run.path).path == run.path
    assert _partials(tmp_path) == []


def test_env_json_records_versions_seed_python(tmp_path):
    run = runs.start(tmp_path, _rec(seed=123), ["a"], "keras")
    env = json.loads(run.file("env.json").read_text())
    assert env["seed"] == 123
    assert env["python"] == sys.version.split()[0]
    assert env["backend"] == "keras"
    assert env["versions"]["numpy"]
    assert "onnxruntime" in env["versions"]
    assert env["vidcli"]


def test_open_rejects_non_run_folders(tmp_path):
    with pytest.raises(VidcliError, match="not found"):
        runs.Run.open(tmp_path / "missing")
    (tmp_path / "plain").mkdir()
    with pytest.raises(VidcliError, match="not a vidcli run folder") as info:
        runs.Run.open(tmp_path / "plain")
    assert info.value.exit_code == 2
    f = tmp_path / "file.txt"
    f.write_text("x")
    with pytest.raises(VidcliError):
        runs.Run.open(f)


def test_missing_or_bad_labels(tmp_path):
    run = runs.start(tmp_path, _rec(), ["a"], "keras")
    run.file(runs.LABELS_FILE).unlink()
    with pytest.raises(VidcliError, match="labels"):
        run.labels  # noqa: B018
    run.file(runs.LABELS_FILE).write_text('{"a": 1}')
    with pytest.raises(VidcliError, match="list of class names"):
        run.labels  # noqa: B018
    run.file(runs.LABELS_FILE).write_text("[1, 2")
    with pytest.raises(VidcliError, match="labels.json"):
        run.labels  # noqa: B018


def test_default_run_is_the_most_recently_updated_finished_one(tmp_path):
    from vidcli.models import default_run

    with pytest.raises(VidcliError, match="no runs found"):
        default_run(tmp_path)
    a = runs.start(tmp_path, _rec("a"), ["x"], "keras")
    b = runs.start(tmp_path, _rec("b"), ["x"], "keras")
    with pytest.raises(VidcliError, match="no finished run"):
        default_run(tmp_path)
    a.update_state(status="finished")
    b.update_state(status="finished")
    os.utime(a.file(runs.RUN_FILE), (time.time() - 100, time.time() - 100))
    os.utime(b.file(runs.RUN_FILE), (time.time() - 50, time.time() - 50))
    assert default_run(tmp_path).path == b.path
    a.update_state(status="finished")
    assert default_run(tmp_path).path == a.path
    b.update_state(status="training")  # newer, but not finished
    assert default_run(tmp_path).path == a.path
    (tmp_path / "c" / "1").mkdir(parents=True)  # not a run: ignored
    assert default_run(tmp_path).path == a.path


def test_update_state_merges(tmp_path):
    run = runs.start(tmp_path, _rec(), ["x"], "keras")
    run.update_state(epochs_done=2, best_score=0.5)
    state = run.update_state(status="finished")
    assert state["epochs_done"] == 2 and state["best_score"] == 0.5 and state["status"] == "finished"
    assert json.loads(run.file(runs.RUN_FILE).read_text()) == state


def test_atomic_path_leaves_nothing_on_exception(tmp_path):
    final = tmp_path / "out.bin"
    final.write_bytes(b"old")
    with pytest.raises(RuntimeError), fsio.atomic_path(final) as tmp:
        tmp.write_bytes(b"half")
        assert fsio.PARTIAL_MARK in tmp.name and tmp.parent == tmp_path
        raise RuntimeError("boom")
    assert final.read_bytes() == b"old"
    assert _partials(tmp_path) == []


def test_atomic_path_on_keyboard_interrupt_and_for_folders(tmp_path):
    final = tmp_path / "model.keras"
    with pytest.raises(KeyboardInterrupt), fsio.atomic_path(final, suffix=".keras") as tmp:
        assert tmp.suffix == ".keras"
        tmp.unlink()
        tmp.mkdir()
        (tmp / "inner").write_text("x")
        raise KeyboardInterrupt
    assert not final.exists()
    assert _partials(tmp_path) == []


def test_atomic_writes_have_normal_mode(tmp_path):
    old = os.umask(0o022)
    try:
        fsio.write_json(tmp_path / "a.json", {"x": 1})
        with fsio.atomic_path(tmp_path / "b.bin") as tmp:
            tmp.write_bytes(b"1")
    finally:
        os.umask(old)
    for name in ("a.json", "b.bin"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644, name
    assert fsio.read_json(tmp_path / "a.json") == {"x": 1}


def test_write_error_is_a_vidcli_failure(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(VidcliError) as info:
        fsio.write_text(blocker / "sub" / "x.txt", "y")
    assert info.value.exit_code == 1 and "cannot write" in str(info.value)


def test_run_files_are_written_atomically(tmp_path, monkeypatch):
    """A crash while the run's state is being written leaves the previous state intact."""
    run = runs.start(tmp_path, _rec(), ["x"], "keras")
    before = run.file(runs.RUN_FILE).read_text()

    def broken(self, data):
        with open(self, "wb") as f:
            f.write(data[:5])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", broken)
    with pytest.raises(VidcliError, match="No space left"):
        run.update_state(status="training")
    monkeypatch.undo()
    assert run.file(runs.RUN_FILE).read_text() == before
    assert _partials(tmp_path) == []


def test_gpus_are_read_from_nvidia_smi(tmp_path, monkeypatch):
    from vidcli import runs

    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\necho 'NVIDIA H100 80GB HBM3, 550.54.15, 81559 MiB, 9.0'\n"
                    "echo 'NVIDIA H100 80GB HBM3, 550.54.15, 81559 MiB, 9.0'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    gpus = runs.gpus()
    assert len(gpus) == 2
    assert gpus[0] == {"name": "NVIDIA H100 80GB HBM3", "driver": "550.54.15", "memory": "81559 MiB",
                       "compute_capability": "9.0"}
    fake.write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed' >&2\nexit 9\n")
    assert runs.gpus() == []
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert runs.gpus() == []


@pytest.mark.parametrize("name", ["../../escaped", "..", "", ".hidden", "a/b", "a\\b", "x\x00", "\n"])
def test_create_refuses_names_that_are_not_one_folder(tmp_path, name):
    root = tmp_path / "deep" / "runs"
    with pytest.raises(VidcliError) as info:
        runs.create(root, name)
    assert info.value.exit_code == 2 and "name:" in str(info.value) and "\n" not in str(info.value)
    assert not root.exists() and list(tmp_path.rglob("*")) == []


def _unwritable(tmp_path: Path) -> Path:
    """A folder this process cannot write in, even as root (root ignores mode bits; /sys refuses it too)."""
    if os.geteuid() != 0:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        return ro / "runs"
    if Path("/sys").is_dir() and _mkdir_fails(Path("/sys")):
        return Path("/sys") / "vidcli-test-runs"
    pytest.skip("no folder here that root cannot write")


def _mkdir_fails(parent: Path) -> bool:
    probe = parent / "vidcli-probe"
    try:
        probe.mkdir()
    except OSError:
        return True
    probe.rmdir()
    return False


@pytest.mark.parametrize("kind", ["read-only", "a file", "under a file"])
def test_runs_dir_that_cannot_be_written_is_a_failure_line(tmp_path, kind):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    root = {"read-only": _unwritable(tmp_path), "a file": blocker, "under a file": blocker / "runs"}[kind]
    with pytest.raises(VidcliError) as info:
        runs.create(root, "exp")
    assert info.value.exit_code == 1
    msg = str(info.value)
    assert msg.startswith(f"cannot make a run folder in {root}: ") and "\n" not in msg


def test_read_only_runs_dir_through_the_cli(tmp_path):
    """`vidcli train --runs-dir <read-only>`: one `error:` line, exit 1 (the job failed; the input was fine)."""
    from conftest import one_error_line, write_recipe
    from typer.testing import CliRunner

    from vidcli.cli.main import app
    from vidcli.datasets.synth import write_synth_videos

    data = write_synth_videos(tmp_path / "data", classes=2, counts={"train": 1, "val": 0, "test": 0}, frames=4,
                              size=32, workers=1)
    rec = write_recipe(tmp_path / "r.yaml", {"name": "ro", "data": {"root": str(data), "frames": 2, "size": [32, 32]},
                                             "model": {"arch": "r2plus1d", "params": {"filters": [4]}},
                                             "train": {"epochs": 1, "batch_size": 2}})
    root = _unwritable(tmp_path)
    result = CliRunner().invoke(app, ["train", str(rec), "--runs-dir", str(root)])
    assert result.exit_code == 1, result.stderr + repr(result.exception)
    assert "cannot make a run folder" in one_error_line(result.stderr, only=False)
    assert not root.exists()


@pytest.mark.parametrize("command", ["eval", "confusion", "precision-recall"])
@pytest.mark.parametrize("args", [["--batch-size", "0"], ["--batch-size", "-3"], ["--split", "../x"]])
def test_run_commands_refuse_bad_options(tmp_path, command, args):
    from conftest import one_error_line
    from typer.testing import CliRunner

    from vidcli.cli.main import app

    run = runs.start(tmp_path, _rec(), ["a"], "keras")
    result = CliRunner().invoke(app, [command, str(run.path), *args])
    assert result.exit_code == 2, result.stderr + repr(result.exception)
    assert args[0] in one_error_line(result.stderr)
    assert not run.file("predictions").exists()


@pytest.mark.parametrize(("arch", "opset", "allowed"), [("r2plus1d", "3", "[11, 18]"), ("r2plus1d", "19", "[11, 18]"),
                                                        ("tsm", "9", "[10, 20]"), ("tsm", "21", "[10, 20]")])
def test_export_refuses_an_opset_its_exporter_cannot_write(tmp_path, arch, opset, allowed):
    from conftest import one_error_line
    from typer.testing import CliRunner

    from vidcli.cli.main import app

    run = runs.start(tmp_path, recipe.parse({"name": "exp", "model": {"arch": arch}}), ["a"], "keras")
    result = CliRunner().invoke(app, ["export-onnx", str(run.path), "--opset", opset])
    assert result.exit_code == 2, result.stderr + repr(result.exception)
    line = one_error_line(result.stderr)
    assert "--opset" in line and allowed in line
    assert not run.file("model.onnx").exists()


def test_export_opset_help_matches_the_ranges():
    from typer.testing import CliRunner

    from vidcli.cli.main import app

    text = " ".join(CliRunner().invoke(app, ["export-onnx", "--help"]).stdout.split())
    for lo, hi in recipe.OPSETS.values():
        assert f"{lo}-{hi}" in text
