"""Ctrl-C, errors and normal ends never leave a decode thread running into interpreter shutdown.

A tf.data worker that comes back from OpenCV while Python is finalizing is killed inside OpenCV's
catch-all and the process aborts (SIGABRT, "terminate called without an active exception"). The
gates in `vidcli.backends.keras.data` stop and drain every pipeline first; these tests hold them to it,
from the gate itself up to real SIGINTs sent to `vidcli train`.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import VIDEOS, env, tiny_recipe_dict, write_recipe

from vidcli import interrupts


def _source(n: int = 6):
    from vidcli.datasets.source import Source

    paths = [str(VIDEOS / "Megamind.avi"), str(VIDEOS / "tree.avi")] * (n // 2)
    return Source("videos", paths, np.arange(len(paths), dtype=np.int64) % 2, ["a", "b"], (4, 32, 32, 3), 4, 2,
                  (32, 32))


def _counted(source):
    calls = []
    real = source.load

    def load(i, training=False, seed=None):
        calls.append(i)
        return real(i, training=training, seed=seed)

    source.load = load
    return calls


def test_closed_gate_answers_at_once_without_decoding():
    import tensorflow as tf

    from vidcli.backends.keras import data as kdata

    src = _source()
    calls = _counted(src)
    with kdata.guard():
        load = kdata.train_loader(src)
        x, ok = next(iter(tf.data.Dataset.from_tensors((np.int64(0), np.int64(1))).map(load)))
        assert float(ok) == 1.0 and float(x.numpy().max()) > 0 and calls == [0]
    x, ok = next(iter(tf.data.Dataset.from_tensors((np.int64(1), np.int64(1))).map(load)))
    assert float(ok) == 0.0 and float(x.numpy().max()) == 0.0
    assert calls == [0], "a closed gate must not decode"
    assert not src.failed, "a placeholder is not a failed clip"


def test_drain_waits_for_the_decode_in_flight():
    from vidcli.backends.keras import data as kdata

    gate = kdata.new_gate()
    inside, release = threading.Event(), threading.Event()

    def decode():
        with gate.admit() as admitted:
            assert admitted
            inside.set()
            release.wait(5)

    worker = threading.Thread(target=decode)
    worker.start()
    assert inside.wait(5)
    threading.Timer(0.3, release.set).start()
    t0 = time.monotonic()
    assert kdata.drain(gate.serial, timeout=10, quiet=0.05)
    assert time.monotonic() - t0 >= 0.25, "drain returned while a decode was still running"
    worker.join(5)
    with gate.admit() as admitted:
        assert not admitted


def test_drain_gives_up_after_its_timeout():
    from vidcli.backends.keras import data as kdata

    gate = kdata.new_gate()
    release = threading.Event()

    def stuck():
        with gate.admit():
            release.wait(5)

    worker = threading.Thread(target=stuck)
    worker.start()
    time.sleep(0.05)
    try:
        assert kdata.drain(gate.serial, timeout=0.2, quiet=0.01) is False
    finally:
        release.set()
        worker.join(5)


def test_guard_closes_only_the_pipelines_made_inside():
    from vidcli.backends.keras import data as kdata

    before = kdata.new_gate()
    with kdata.guard():
        inside = kdata.new_gate()
    assert inside.closed and not before.closed
    with pytest.raises(RuntimeError), kdata.guard():
        failing = kdata.new_gate()
        raise RuntimeError("a TensorFlow error")
    assert failing.closed and not before.closed


def test_pipeline_drained_by_guard_stops_decoding():
    """A training pipeline still running when its guard ends (as after Ctrl-C): no decode after the drain."""
    from vidcli.backends.keras import data as kdata

    src = _source(12)
    calls = _counted(src)
    with kdata.guard():
        it = iter(kdata.train_dataset(src, 2, seed=0, first_epoch=0, epochs=50, workers=2))
        x, y, w = next(it)
        assert x.shape == (2, 4, 32, 32, 3) and float(w.numpy().min()) == 1.0
    seen = len(calls)
    weights = [float(next(it)[2].numpy().max()) for _ in range(8)]
    assert len(calls) == seen
    assert weights[-1] == 0.0, "after the drain only weight-0 placeholders come out"


def test_eval_pipeline_is_drained_too():
    from vidcli.backends.keras import data as kdata

    src = _source(12)
    calls = _counted(src)
    errors: list = []
    with kdata.guard():
        it = iter(kdata.eval_dataset(src, 2, workers=2, errors=errors))
        next(it)
    seen = len(calls)
    for _ in range(3):
        next(it)
    assert len(calls) == seen and errors == []


def test_deferred_interrupt_is_a_flag_then_a_raise():
    previous = signal.getsignal(signal.SIGINT)
    with interrupts.deferred():
        signal.raise_signal(signal.SIGINT)
        assert interrupts.requested()
        with pytest.raises(KeyboardInterrupt):
            interrupts.check()
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)  # the second Ctrl-C does not wait
    assert not interrupts.requested()
    assert signal.getsignal(signal.SIGINT) is previous


# A process that leaves while its pipeline's workers are busy inside OpenCV (GaussianBlur releases the GIL
# and takes it back inside OpenCV's catch-all, as VideoCapture.read does). Without the drain it aborts.
EXIT_SCRIPT = """
import os, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import cv2
import numpy as np
from vidcli.backends.keras import data as kdata
from vidcli.datasets.source import Source

videos = sys.argv[1:3]
src = Source("videos", videos * 40, np.zeros(80, np.int64), ["a"], (4, 32, 32, 3), 4, 2, (32, 32))
real, big = src.load, np.zeros((256, 256, 3), np.uint8)

def busy(i, training=False, seed=None):
    for _ in range(400):
        cv2.GaussianBlur(big, (15, 15), 0)
    return real(i, training=training, seed=seed)

src.load = busy
how = sys.argv[3]
ds = kdata.train_dataset(src, 2, 0, 0, 100, 4) if how != "error" else kdata.eval_dataset(src, 2, 4, [])
it = iter(ds)
next(it)
if how == "exit":
    sys.exit(130)
if how == "error":
    raise RuntimeError("an error while the pipeline runs")
if how == "interrupt":
    raise KeyboardInterrupt
"""


@pytest.mark.slow
@pytest.mark.parametrize(("how", "code"), [("exit", 130), ("error", 1), ("interrupt", -signal.SIGINT), ("end", 0)])
def test_leaving_with_decodes_in_flight_is_clean(how, code):
    proc = subprocess.run([sys.executable, "-c", EXIT_SCRIPT, str(VIDEOS / "Megamind.avi"), str(VIDEOS / "tree.avi"),
                           how], capture_output=True, text=True, env=env(), timeout=300)
    assert proc.returncode in (code, 130 if how == "interrupt" else code), proc.stderr[-2000:]
    assert "terminate called" not in proc.stderr and "FATAL" not in proc.stderr


def _state(run: Path) -> dict:
    return json.loads((run / "run.json").read_text())


def _interrupt(recipe: Path, runs_dir: Path, delay: float) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "vidcli", "train", str(recipe), "--runs-dir", str(runs_dir)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env())
    proc.delay = delay  # type: ignore[attr-defined]
    return proc


def _signal_when_training(proc: subprocess.Popen, run: Path, delay: float) -> None:
    """SIGINT `delay` seconds after the first checkpoint: training, validation or checkpointing by then."""
    deadline = time.monotonic() + 240
    while proc.poll() is None and not (run / "last.keras").is_file() and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(delay)
    if proc.poll() is None:  # one that ended already fails the exit-code check with its own stderr
        proc.send_signal(signal.SIGINT)


@pytest.mark.slow
def test_ten_real_interrupts_at_random_moments_all_exit_130(tmp_path, tiny_data):
    """10 `vidcli train` processes (five at a time), each sent SIGINT at a random moment of training: every one
    exits 130 with one `error:` line and keeps a loadable checkpoint; two of them, drawn at random, are
    resumed for one more epoch. Before the drain, about 1 in 8 such interrupts aborted (BENCHMARKS.md)."""
    import keras
    from typer.testing import CliRunner

    import vidcli.backends.keras.r2plus1d  # noqa: F401  (registers the layers)
    from vidcli.cli.main import app

    recipe = write_recipe(tmp_path / "tiny.yaml", tiny_recipe_dict(tiny_data, epochs=1000, tensorboard=False))
    seed = random.randrange(10**6)
    rng = random.Random(seed)
    results = []
    for batch in range(2):
        procs = []
        for k in range(5):
            runs_dir = tmp_path / f"runs{5 * batch + k}"
            procs.append((_interrupt(recipe, runs_dir, rng.uniform(0, 3)), runs_dir / "tiny" / "1"))
        threads = [threading.Thread(target=_signal_when_training, args=(p, run, p.delay)) for p, run in procs]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for proc, run in procs:
            try:
                _, stderr = proc.communicate(timeout=120)
            finally:
                if proc.poll() is None:
                    proc.kill()
            results.append((proc.returncode, stderr, run, proc.delay))
    for rc, stderr, run, delay in results:
        where = f"(seed {seed}, delay {delay:.2f}s) {stderr[-1500:]}"
        assert rc == 130, where
        errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and "interrupted" in errors[0] and "--resume" in errors[0], where
        assert "Traceback" not in stderr, where
        assert _state(run)["status"] == "interrupted", where
        assert keras.saving.load_model(run / "last.keras", compile=False).count_params() > 0, where
    runner = CliRunner()
    for _, _, run, _ in rng.sample(results, 2):
        done = _state(run)["epochs_done"]
        result = runner.invoke(app, ["train", "--resume", str(run), "--set", f"train.epochs={done + 1}"])
        assert result.exit_code == 0, result.stderr + repr(result.exception)
        assert _state(run)["status"] == "finished" and _state(run)["epochs_done"] == done + 1


def test_interrupt_before_the_first_checkpoint_leaves_no_run_folder(tmp_path, tiny_data, monkeypatch):
    """Ctrl-C while the model is still being built: nothing to resume, so no run folder is left behind."""
    from conftest import one_error_line
    from typer.testing import CliRunner

    from vidcli.backends.keras import backend
    from vidcli.cli.main import app

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(backend.KerasBackend, "build", interrupted)
    recipe = write_recipe(tmp_path / "tiny.yaml", tiny_recipe_dict(tiny_data, epochs=1, tensorboard=False))
    result = CliRunner().invoke(app, ["train", str(recipe), "--runs-dir", str(tmp_path / "runs")])
    assert result.exit_code == 130, result.stderr + repr(result.exception)
    assert "interrupted" in one_error_line(result.stderr, only=False)
    assert not list((tmp_path / "runs").glob("*/*"))
