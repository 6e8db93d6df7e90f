"""Distributed training of the Keras families on CPU: MirroredStrategy over two logical CPU devices
(VIDCLI_CPU_DEVICES=2) and MultiWorkerMirroredStrategy over two processes (TF_CONFIG on 127.0.0.1),
plus the framework-free role and learning-rate-scaling rules."""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_recipe_dict, write_recipe
from typer.testing import CliRunner

from vidcli import distributed
from vidcli import recipe as recipe_mod
from vidcli.cli.main import app
from vidcli.errors import VidcliError

EPOCHS = 3


# --- roles ------------------------------------------------------------------------------------------


def _tf_config(monkeypatch, cluster: dict, kind: str, index: int) -> None:
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": {"type": kind, "index": index}}))


def test_tf_config_ranks_put_the_chief_first(monkeypatch):
    cluster = {"chief": ["a:1"], "worker": ["b:1", "c:1"]}
    _tf_config(monkeypatch, cluster, "chief", 0)
    assert distributed.role_for("keras", "multi_worker") == distributed.Role(0, 3, "tf_config")
    _tf_config(monkeypatch, cluster, "worker", 1)
    role = distributed.role_for("keras", "multi_worker")
    assert (role.rank, role.world, role.chief) == (2, 3, False)
    _tf_config(monkeypatch, {"worker": ["a:1", "b:1"]}, "worker", 0)  # no chief: worker 0 is the chief
    assert distributed.role_for("keras", "multi_worker").chief


@pytest.mark.parametrize("raw, needle", [
    (None, "needs TF_CONFIG"),
    ("{not json", "not valid JSON"),
    (json.dumps({"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 3}}), "not in the cluster"),
    (json.dumps({"cluster": {"worker": ["a:1"], "ps": ["p:1"]}, "task": {"type": "ps", "index": 0}}), "'ps'"),
])
def test_bad_tf_config_is_one_clear_error(monkeypatch, raw, needle):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    if raw is not None:
        monkeypatch.setenv("TF_CONFIG", raw)
    with pytest.raises(VidcliError, match=needle):
        distributed.role_for("keras", "multi_worker")


def test_torchrun_roles_and_launcher_mixups(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    assert distributed.role_for("torch", "none") == distributed.Role(3, 4, "torchrun")
    with pytest.raises(VidcliError, match="Keras model under torchrun"):
        distributed.role_for("keras", "mirrored")
    with pytest.raises(VidcliError, match="launch PyTorch models with `torchrun"):
        distributed.role_for("torch", "mirrored")
    monkeypatch.setenv("RANK", "7")
    with pytest.raises(VidcliError, match="RANK"):
        distributed.role_for("torch", "none")
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert distributed.role_for("torch", "none") == distributed.Role()


# --- learning-rate scaling ----------------------------------------------------------------------------


def test_lr_scaling_rules():
    base = {"learning_rate": 0.1, "lr_base_batch": 64, "batch_size": 256}
    assert recipe_mod.scaled_learning_rate(recipe_mod.TrainConfig(**base)) == pytest.approx(0.1)
    linear = recipe_mod.TrainConfig(lr_scaling="linear", **base)
    assert recipe_mod.scaled_learning_rate(linear) == pytest.approx(0.4)
    assert recipe_mod.learning_rate_at(linear, 0) == pytest.approx(0.4)
    assert recipe_mod.scaled_learning_rate(recipe_mod.TrainConfig(lr_scaling="sqrt", **base)) == pytest.approx(0.2)
    with pytest.raises(VidcliError, match="needs train.lr_base_batch"):
        recipe_mod.TrainConfig(lr_scaling="linear", learning_rate=0.1)


# --- the data plan ------------------------------------------------------------------------------------


def test_shard_plan_covers_each_clip_once_and_pads_with_weightless_clips():
    from vidcli.backends.keras.distribute import shard_plan

    n, batch, pipelines = 23, 8, 2
    order = np.random.default_rng(0).permutation(n)
    parts = [shard_plan(order, order * 10, batch, pipelines, p) for p in range(pipelines)]
    real = np.concatenate([p["idx"][p["valid"] > 0] for p in parts])
    assert sorted(real.tolist()) == list(range(n))
    assert sum(len(p["idx"]) for p in parts) == 24  # 3 global batches of 8
    assert all(len(p["idx"]) == 12 for p in parts)  # every pipeline takes the same number of steps
    assert np.array_equal(parts[0]["seed"], parts[0]["idx"] * 10)  # seeds travel with their clips
    # global batch k = order[8k:8k+8]; pipeline 0 gets its first half, pipeline 1 its second
    assert parts[0]["idx"][:4].tolist() == order[:4].tolist()
    assert parts[1]["idx"][:4].tolist() == order[4:8].tolist()
    assert parts[1]["count"].tolist() == [8] * 8 + [7] * 4  # the last global batch holds 7 real clips
    assert parts[1]["valid"][-1] == 0


# --- real runs ------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(tmp: Path, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CONFIG", "WORLD_SIZE", "RANK")}
    env.update(TMPDIR=str(tmp), OMP_NUM_THREADS="1", **extra)
    return env


def _vidcli(args: list[str], env: dict, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "vidcli", *args], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _finish(procs: list[subprocess.Popen], timeout: float = 600) -> list[str]:
    logs = []
    for p in procs:
        out, err = p.communicate(timeout=timeout)
        assert p.returncode == 0, err[-3000:]
        logs.append(err)
    return logs


def _history(run: Path) -> list[dict]:
    with open(run / "history.csv") as f:
        return [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(f)]


def _runs(runs_dir: Path) -> list[Path]:
    return sorted(p.parent for p in runs_dir.glob("*/*/run.json"))


@pytest.fixture(scope="module")
def dist_recipe(tiny_data, tmp_path_factory) -> Path:
    return write_recipe(tmp_path_factory.mktemp("dist") / "tiny.yaml",
                        tiny_recipe_dict(tiny_data, epochs=EPOCHS, tensorboard=False))


@pytest.fixture(scope="module")
def single_and_mirrored(dist_recipe, tmp_path_factory) -> dict[str, Path]:
    """The tiny recipe on one device and mirrored on two logical CPU devices, run side by side."""
    tmp = tmp_path_factory.mktemp("mirrored")
    single = _vidcli(["train", str(dist_recipe), "--runs-dir", "single"], _env(tmp), tmp)
    mirrored = _vidcli(["train", str(dist_recipe), "--runs-dir", "mirrored", "--set", "train.distribute=mirrored"],
                       _env(tmp, VIDCLI_CPU_DEVICES="2"), tmp)
    logs = _finish([single, mirrored])
    assert "MirroredStrategy, 2 replicas, 3 clips per replica" in logs[1]
    return {"single": tmp / "single", "mirrored": tmp / "mirrored", "tmp": tmp}


@pytest.mark.slow
def test_mirrored_two_devices_follows_the_single_device_loss_curve(single_and_mirrored):
    (single,), (mirrored,) = _runs(single_and_mirrored["single"]), _runs(single_and_mirrored["mirrored"])
    a, b = _history(single), _history(mirrored)
    assert len(a) == len(b) == EPOCHS
    # Same data order and weights; batch norm sees 3 clips per replica instead of 6: noise, not drift.
    for ra, rb in zip(a, b, strict=True):
        assert abs(ra["loss"] - rb["loss"]) < 0.1, (a, b)
        assert abs(ra["val_loss"] - rb["val_loss"]) < 0.15, (a, b)
    state = json.loads((mirrored / "run.json").read_text())
    assert state["status"] == "finished" and state["replicas"] == 2
    env = json.loads((mirrored / "env.json").read_text())
    assert env["distributed"]["strategy"] == "mirrored" and "gpus" in env and "cuda" in env
    assert (mirrored / "best.keras").is_file() and (mirrored / "last.keras").is_file()


@pytest.mark.slow
def test_mirrored_with_sync_bn_computes_exactly_the_single_device_step(dist_recipe, tmp_path):
    """With a learning rate of 1e-12 (no update to speak of) and synchronised batch norm, a mirrored epoch must
    report the single-device loss and accuracy: the loss denominator, weights, metric sums and data split are
    all right."""
    sets = ["--set", "train.epochs=1", "--set", "train.learning_rate=1.0e-12"]
    single = _vidcli(["train", str(dist_recipe), "--runs-dir", "a", *sets], _env(tmp_path), tmp_path)
    mirrored = _vidcli(["train", str(dist_recipe), "--runs-dir", "b", *sets, "--set", "train.distribute=mirrored",
                        "--set", "train.sync_bn=true"], _env(tmp_path, VIDCLI_CPU_DEVICES="2"), tmp_path)
    _finish([single, mirrored])
    (ra,), (rb,) = _history(_runs(tmp_path / "a")[0]), _history(_runs(tmp_path / "b")[0])
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        assert ra[key] == pytest.approx(rb[key], abs=2e-4), (key, ra, rb)


@pytest.mark.slow
def test_multi_worker_two_processes_one_run_folder_then_resume(dist_recipe, single_and_mirrored, tmp_path):
    ports = [_free_port(), _free_port()]
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}

    def launch(args: list[str]) -> list[str]:
        procs = []
        for i in range(2):
            tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})
            procs.append(_vidcli(args, _env(tmp_path, TF_CONFIG=tf_config), tmp_path))
        return _finish(procs)

    logs = launch(["train", str(dist_recipe), "--runs-dir", "runs", "--set", "train.distribute=multi_worker"])
    runs = _runs(tmp_path / "runs")
    assert len(runs) == 1, runs  # the chief's; the other worker trained in a scratch copy
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("vidcli-worker-")] == []  # scratch removed
    assert "done:" in logs[0] and "done:" not in logs[1]
    hist = _history(runs[0])
    # Two workers of one replica each cut the data exactly as two mirrored replicas do: the same curve.
    mirrored = _history(_runs(single_and_mirrored["mirrored"])[0])
    for rm, rw in zip(mirrored, hist, strict=True):
        assert rw["loss"] == pytest.approx(rm["loss"], abs=1e-3)
        assert rw["val_accuracy"] == pytest.approx(rm["val_accuracy"], abs=1e-6)
    env = json.loads((runs[0] / "env.json").read_text())
    assert env["distributed"] == {"launcher": "tf_config", "world_size": 2, "strategy": "multi_worker"}

    launch(["train", "--resume", str(runs[0]), "--set", f"train.epochs={EPOCHS + 1}"])
    assert _runs(tmp_path / "runs") == runs
    resumed = _history(runs[0])
    assert [r["epoch"] for r in resumed] == list(range(1, EPOCHS + 2))
    assert resumed[:EPOCHS] == hist
    assert json.loads((runs[0] / "run.json").read_text())["epochs_done"] == EPOCHS + 1


def test_batch_that_does_not_split_over_replicas_is_refused_and_leaves_no_run(dist_recipe, tmp_path):
    proc = _vidcli(["train", str(dist_recipe), "--runs-dir", "runs", "--set", "train.distribute=mirrored",
                    "--set", "train.batch_size=5"], _env(tmp_path, VIDCLI_CPU_DEVICES="2"), tmp_path)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 2
    assert "train.batch_size 5 does not split over 2 replicas" in err
    assert _runs(tmp_path / "runs") == []


def test_multi_worker_without_tf_config_fails_before_any_run(dist_recipe, tmp_path, monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    result = CliRunner().invoke(app, ["train", str(dist_recipe), "--runs-dir", str(tmp_path / "runs"),
                                      "--set", "train.distribute=multi_worker"])
    assert result.exit_code == 2
    assert "needs TF_CONFIG" in result.stderr
    assert not (tmp_path / "runs").exists()
