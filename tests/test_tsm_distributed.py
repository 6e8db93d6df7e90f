"""TSM under torchrun (DistributedDataParallel over gloo on the CPU) and the GPU-facing recipe keys.

The end-to-end tests launch `torch.distributed.run` with two processes on built-in synthetic data; the
unit tests cover the sharding, the SyncBatchNorm conversion, channels-last and the warnings and errors.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import VIDEOS, env, write_recipe
from torch import nn

from vidcli import recipe as recipe_mod
from vidcli import training
from vidcli.backends.torch import backend, tsm
from vidcli.backends.torch import data as tdata
from vidcli.datasets.source import Source
from vidcli.errors import VidcliError
from vidcli.runs import Run

TINY = {"num_segments": 4, "width": 8, "layers": [1, 1, 1, 1], "shift_div": 4, "dropout": 0.0}
EPOCHS = 12


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _recipe(root: Path, epochs: int = EPOCHS) -> dict:
    """A width-8 TSM that fits 3 motion classes in a few seconds; the global batch of 12 is 6 per process."""
    return {
        "name": "tsm_ddp",
        "data": {"root": str(root), "frames": 4, "size": [32, 32], "sampling": "segments", "multiscale_crop": False,
                 "max_bad_fraction": 0.05},
        "model": {"arch": "tsm", "params": dict(TINY)},
        "train": {"epochs": epochs, "batch_size": 12, "learning_rate": 0.003, "optimizer": "adam",
                  "schedule": "cosine", "seed": 0, "tensorboard": False},
    }


def _torchrun(*args: str, tmp: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc-per-node 2 ARGS` with this venv's torch, one thread per process and a
    private TMPDIR (where the non-chief process keeps its scratch run)."""
    tmp.mkdir(parents=True, exist_ok=True)
    e = env() | {"OMP_NUM_THREADS": "1", "TMPDIR": str(tmp)}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        e.pop(k, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=e, timeout=timeout)


@pytest.fixture(scope="module")
def motion_data(tmp_path_factory) -> Path:
    """96 train clips of 3 motions plus one that does not decode (97: the 2-way shard needs one clip of
    padding), and 24 validation clips."""
    from vidcli.datasets.synth import write_synth_videos

    root = write_synth_videos(tmp_path_factory.mktemp("motion") / "data", classes=3,
                              counts={"train": 32, "val": 8, "test": 1}, frames=8, size=32, workers=2)
    (root / "train" / "left" / "zz_broken.avi").write_bytes((VIDEOS / "Megamind.avi").read_bytes()[:6000])
    return root


# ---------------------------------------------------------------- sharding


def _volumes(n: int) -> Source:
    items = [np.full((4, 8, 8, 3), i, np.uint8) for i in range(n)]
    return Source("volumes", items, np.arange(n) % 3, ["a", "b", "c"], (4, 8, 8, 3))


@pytest.mark.parametrize("n", [1, 5, 6, 7, 97])
@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_shards_cover_every_clip_once_with_equal_lengths(n: int, world: int) -> None:
    shards = [tdata.shard(n, r, world) for r in range(world)]
    lengths = {len(p) for p, _ in shards}
    assert lengths == {-(-n // world)}  # every rank does the same number of steps
    real = np.concatenate([p[m] for p, m in shards])
    assert sorted(real.tolist()) == list(range(n))
    padding = np.concatenate([p[~m] for p, m in shards])
    assert len(padding) == -(-n // world) * world - n and np.all(padding < n)
    # Per-rank batch b: global batch k is the single-process batch k, positions k*b*world .. (k+1)*b*world.
    b = 2
    for k in range(-(-n // world) // b):
        batch = sorted(x for p, _ in shards for x in p[k * b:(k + 1) * b].tolist())
        assert batch == sorted(x % n for x in range(k * b * world, (k + 1) * b * world))


def test_train_clips_shard_the_epoch_order_and_flag_padding() -> None:
    src = _volumes(7)
    ranks = [tdata.TrainClips(src, seed=3, rank=r, world=2) for r in range(2)]
    single = tdata.TrainClips(src, seed=3)
    seen = []
    for epoch in range(3):
        for ds in (*ranks, single):
            ds.set_epoch(epoch)
        assert np.array_equal(single.indices(), tdata.epoch_plan(7, 3, epoch)[0])  # one process: unchanged
        assert len(ranks[0]) == len(ranks[1]) == 4
        real = np.concatenate([ds.indices()[ds.real] for ds in ranks])
        assert sorted(real.tolist()) == list(range(7))
        seen.append(ranks[0].indices().tolist())
        clip, label, ok, i, err, is_real = ranks[1][3]  # position 7: the padding
        assert ok and not is_real and err == "" and int(clip[0, 0, 0, 0]) == i == ranks[1].indices()[3]
        assert label == i % 3 and all(ranks[0][k][5] for k in range(4))
    assert len({tuple(s) for s in seen}) == 3  # the shard changes every epoch


# ---------------------------------------------------------------- recipe keys in one process


def _trainer(**train) -> backend._Trainer:
    rec = recipe_mod.from_dict(recipe_mod.Recipe, {"name": "t", "data": {"frames": 4},
                                                     "model": {"arch": "tsm", "params": dict(TINY)}, "train": train})
    return backend._Trainer(None, rec, _volumes(6), None, backend.Comm())  # type: ignore[arg-type]


def _tiny_tsm(**params) -> tsm.TSM:
    torch.manual_seed(0)
    return tsm.build(tsm.TsmParams(**{**TINY, **params}), 3)


def test_sync_batchnorm_keeps_weights_and_partial_bn() -> None:
    model = _tiny_tsm(partial_bn=True)
    plain = copy.deepcopy(model)
    ids = [id(p) for p in model.parameters()]
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    backend.sync_batchnorm(model).train()
    bns = [m for m in model.base_model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == n_bn and all(isinstance(m, nn.SyncBatchNorm) for m in bns)
    assert [id(p) for p in model.parameters()] == ids  # an optimizer made before still holds them
    assert bns[0].training and bns[0].weight.requires_grad  # partial BN: only the first layer trains
    assert not any(m.training or m.weight.requires_grad for m in bns[1:])
    a, b = plain.state_dict(), model.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)  # checkpoints unchanged
    x = torch.randn(2, 4, 3, 32, 32)
    plain.train()
    torch.testing.assert_close(model(x), plain(x))  # no process group: plain BatchNorm maths


def test_sync_bn_without_torchrun_warns_and_changes_nothing(capsys) -> None:
    model = _trainer(sync_bn=True).place(_tiny_tsm())
    assert "train.sync_bn needs several processes" in capsys.readouterr().err
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in model.modules())


def test_channels_last_layout_gives_the_same_logits() -> None:
    clips = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (2, 4, 32, 32, 3), dtype=np.uint8))
    card = _trainer().card
    a, b = tdata.to_input(clips, card), tdata.to_input(clips, card, channels_last=True)
    assert torch.equal(a, b) and a.is_contiguous()
    assert b.reshape(-1, 3, 32, 32).is_contiguous(memory_format=torch.channels_last)  # TSM's per-frame view
    model = _tiny_tsm().eval()
    nhwc = _trainer(channels_last=True).place(copy.deepcopy(model)).eval()
    conv = model.base_model.conv1
    assert nhwc.base_model.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert not conv.weight.is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        torch.testing.assert_close(nhwc(b), model(a), atol=1e-5, rtol=1e-4)


def test_mixed_precision_on_the_cpu_warns_and_trains_float32(capsys) -> None:
    tr = _trainer(precision="mixed_bfloat16")
    assert "needs CUDA; training in float32" in capsys.readouterr().err
    assert tr.amp is None and not tr.scaler.is_enabled()


def test_batch_size_must_split_over_the_processes(tiny_data: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    raw = _recipe(tiny_data)
    raw["train"]["batch_size"] = 5
    with pytest.raises(VidcliError, match="batch_size 5 does not split over 2 processes"):
        training.train(write_recipe(tmp_path / "r.yaml", raw), [], None, tmp_path / "runs")
    assert not list((tmp_path / "runs").glob("*/*"))  # the chief removed its empty run folder


# ---------------------------------------------------------------- under torchrun


@pytest.mark.slow
def test_torchrun_trains_one_run_like_one_process_and_resumes(motion_data: Path, tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path / "tsm_ddp.yaml", _recipe(motion_data))
    single = training.train(recipe, [], None, tmp_path / "single")
    runs, scratch = tmp_path / "runs", tmp_path / "tmp"
    out = _torchrun("-m", "vidcli", "train", str(recipe), "--runs-dir", str(runs), tmp=scratch)
    assert out.returncode == 0, out.stderr[-3000:]
    assert [p.relative_to(runs).as_posix() for p in runs.glob("*/*")] == ["tsm_ddp/1"]  # one run folder
    assert not list(scratch.glob("vidcli-worker-*"))  # the other process's scratch copy is gone
    assert out.stderr.count(f"epoch 1/{EPOCHS} ") == 1  # only rank 0 logs
    assert out.stderr.count("skipping clip") == 1  # the broken clip, counted once across both processes
    run = Run.open(runs / "tsm_ddp" / "1")
    state = run.state
    assert state["status"] == "finished" and state["epochs_done"] == EPOCHS and state["skipped_clips"] == 1
    assert state["world_size"] == 2 and state["device"] == "cpu"
    assert json.loads(run.file("env.json").read_text())["distributed"]["world_size"] == 2
    hist = {"ddp": run.file("history.csv").read_text(), "one": single.file("history.csv").read_text()}
    rows = {k: [dict(zip(v.splitlines()[0].split(","), r.split(","), strict=True)) for r in v.splitlines()[1:]]
            for k, v in hist.items()}
    assert [int(r["epoch"]) for r in rows["ddp"]] == list(range(1, EPOCHS + 1))

    # Same band: chance is 1/3; both fit the training clips and both generalise (24 validation clips).
    acc = {k: float(v[-1]["accuracy"]) for k, v in rows.items()}
    best = {"ddp": state["best_score"], "one": single.state["best_score"]}
    assert min(acc.values()) >= 0.8 and abs(acc["ddp"] - acc["one"]) <= 0.15, acc
    assert min(best.values()) >= 0.55, best

    # Validation was split over the ranks and summed: the whole val split, scored as `vidcli eval` scores it.
    from vidcli import evaluation

    summary = evaluation.evaluate(run, "val")
    at_best = rows["ddp"][state["best_epoch"] - 1]
    assert summary["num_samples"] == 24
    assert summary["top1"] == pytest.approx(float(at_best["val_accuracy"]), abs=1e-6)
    assert summary["loss"] == pytest.approx(float(at_best["val_loss"]), rel=1e-4)

    last = torch.load(run.file("last.pt"), map_location="cpu", weights_only=True)
    assert not any(k.startswith("module.") for k in last["model"])  # the bare module's weights
    out = _torchrun("-m", "vidcli", "train", "--resume", str(run.path), "--set", f"train.epochs={EPOCHS + 1}",
                    tmp=scratch)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"resuming {run.path} from epoch {EPOCHS}" in out.stderr
    assert out.stderr.count(f"epoch {EPOCHS + 1}/{EPOCHS + 1} ") == 1 and "epoch 1/" not in out.stderr
    assert [p.relative_to(runs).as_posix() for p in runs.glob("*/*")] == ["tsm_ddp/1"]
    assert run.state["epochs_done"] == EPOCHS + 1 and run.state["status"] == "finished"
    resumed = run.file("history.csv").read_text().splitlines()
    assert resumed[:EPOCHS + 1] == hist["ddp"].splitlines() and len(resumed) == EPOCHS + 2
    assert torch.load(run.file("last.pt"), map_location="cpu", weights_only=True)["epoch"] == EPOCHS + 1


WORKER = """
import json, os, sys
from pathlib import Path
import numpy as np, torch
torch.set_num_threads(1)
from vidcli import recipe as recipe_mod
from vidcli.backends.torch import backend, tsm
from vidcli.datasets.source import Source
from vidcli.engine import check_budget
from vidcli.errors import VidcliError

rec = recipe_mod.from_dict(recipe_mod.Recipe, {{"name": "t", "data": {{"frames": 4, "max_bad_fraction": 0.1}},
    "model": {{"arch": "tsm", "params": {tiny!r}}}, "train": {{"batch_size": 4}}}})
comm = backend.connect(rec.train)
src = Source("volumes", [np.zeros((4, 32, 32, 3), np.uint8)] * 10, np.arange(10) % 3, ["a", "b", "c"],
             (4, 32, 32, 3))
tr = backend._Trainer(None, rec, src, src, comm)
out = {{"world": comm.world, "agree": comm.agree(comm.rank == 0)}}
# One bad clip on rank 1 alone: both ranks record it; a second one puts both over budget together.
tr._count_failures(comm.gather([(3, "bad 3")] if comm.rank else []))
out["failed"] = sorted(src.failed)
try:
    tr._count_failures(comm.gather([(5, "bad 5")] if comm.rank == 0 else []))
    check_budget(len(src.failed), len(src), rec.data.max_bad_fraction)  # what the epoch engine checks per step
except VidcliError as exc:
    out["budget"] = str(exc)
model = tr.place(tsm.build(tsm.TsmParams(**{tiny!r}), 3))
out["val"] = tr.validate(model)
if comm.rank == 1:  # a validation clip of rank 1 breaks: rank 0 must not wait for it
    def broken(i, clips=1, crops=1):
        raise VidcliError(f"clip {{i}} is broken")
    src.load_views = broken
try:
    tr.validate(model)
except VidcliError as exc:
    out["val_error"] = str(exc)
backend.disconnect(comm)
Path(sys.argv[1], f"rank{{comm.rank}}.json").write_text(json.dumps(out))
"""


@pytest.mark.slow
def test_ranks_take_the_same_decisions(tmp_path: Path) -> None:
    script = tmp_path / "worker.py"
    script.write_text(textwrap.dedent(WORKER.format(tiny=TINY)))
    out = _torchrun(str(script), str(tmp_path), tmp=tmp_path / "tmp", timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2))
    assert r0["world"] == r1["world"] == 2
    assert r0["agree"] is r1["agree"] is True  # rank 0's decision
    assert r0["failed"] == r1["failed"] == [3]
    assert "2 of 10 training clips failed" in r0["budget"] and r0["budget"] == r1["budget"]
    assert r0["val"] == r1["val"] and set(r0["val"]) == {"val_loss", "val_accuracy"}
    assert r1["val_error"] == "clip 1 is broken" and "another process" in r0["val_error"]
