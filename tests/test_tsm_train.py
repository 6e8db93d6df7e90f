"""TSM end to end: segment sampling and crops, training with checkpoints and resume, eval views,
ONNX export and predict, and the bad inputs a user can hand it."""

from __future__ import annotations

import json
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import VIDEOS, fixture_path, write_recipe
from typer.testing import CliRunner

from vidcli import models, training
from vidcli import recipe as recipe_mod
from vidcli.backends.torch import backend
from vidcli.backends.torch import data as tdata
from vidcli.cli.main import app
from vidcli.datasets import frames as framesmod
from vidcli.datasets.source import crop_views, open_source, segment_positions, segment_views, train_view
from vidcli.errors import VidcliError
from vidcli.exporting import export
from vidcli.runs import Run

FIXTURE_CKPT = ("tsm", "TSM_kinetics_RGB_resnet50_shift8_blockres_avg_segment8_e50.pth")


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def tsm_recipe(root: Path, epochs: int = 2, fmt: str = "videos", **train) -> dict:
    """A TSM that trains in seconds: width 8, one block per stage, 4 segments of 32x32."""
    return {
        "name": "tsm_tiny",
        "data": {"root": str(root), "format": fmt, "frames": 4, "size": [32, 32], "sampling": "segments"},
        "model": {"arch": "tsm", "params": {"num_segments": 4, "width": 8, "layers": [1, 1, 1, 1], "shift_div": 4,
                                            "dropout": 0.5}},
        "train": {"epochs": epochs, "batch_size": 6, "learning_rate": 0.01, "optimizer": "sgd", "weight_decay": 1e-4,
                  "clip_grad_norm": 20.0, "head_lr_mult": 5.0, "schedule": "step", "step_epochs": [1],
                  "seed": 0, "tensorboard": False, **train},
    }


def _train(tmp: Path, raw: dict, runs: Path, resume: Path | None = None, overrides: list[str] | None = None) -> Run:
    path = None if resume else write_recipe(tmp / f"{raw['name']}.yaml", raw)
    return training.train(path, overrides or [], resume, runs)


@pytest.fixture(scope="module")
def tsm_run(tiny_data, tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("tsm")
    run = _train(tmp, tsm_recipe(tiny_data), tmp / "runs")
    return run.path


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


# ---------------------------------------------------------------- sampling and crops


def test_segment_positions_follow_the_reference() -> None:
    rng = np.random.default_rng(0)
    train = segment_positions(80, 8, "segments", rng=rng)
    assert train.shape == (1, 8)
    assert all(10 * k <= p < 10 * (k + 1) for k, p in enumerate(train[0]))
    assert segment_positions(80, 8, "segments").tolist() == [[5, 15, 25, 35, 45, 55, 65, 75]]
    two = segment_positions(80, 8, "segments", clips=2)
    assert two[:, 0].tolist() == [2, 7] and np.all(np.diff(two, axis=1) == 10)
    dense = segment_positions(200, 8, "dense")
    assert np.all(np.diff(dense[0]) == 8) and dense[0, 0] == (200 - 64) // 2
    assert segment_positions(200, 8, "dense", clips=10).shape == (10, 8)


def test_crops_and_flip() -> None:
    clip = np.zeros((4, 60, 80, 3), np.uint8)
    clip[:, :, :40] = 255  # left half white
    one = crop_views(clip, (32, 32), 1, flip=False)
    three = crop_views(clip, (32, 32), 3, flip=False)
    ten = crop_views(clip, (32, 32), 10, flip=True)
    assert one.shape == (1, 4, 32, 32, 3) and three.shape == (3, 4, 32, 32, 3) and ten.shape == (10, 4, 32, 32, 3)
    assert crop_views(clip, (32, 32), 10, flip=False).shape[0] == 5  # no mirrored views for direction classes
    assert three[0].mean() > three[1].mean()  # left crop sees the white half, right crop does not
    np.testing.assert_array_equal(ten[5], ten[0][:, :, ::-1])
    with pytest.raises(VidcliError, match="crops must be one of"):
        crop_views(clip, (32, 32), 5, flip=False)
    a = train_view(clip, (32, 32), np.random.default_rng(3), multiscale=True, flip=True)
    b = train_view(clip, (32, 32), np.random.default_rng(3), multiscale=True, flip=True)
    assert a.shape == (4, 32, 32, 3) and np.array_equal(a, b)
    flips = [train_view(clip, (32, 32), np.random.default_rng(s), False, True)[0, 0, 0, 0] for s in range(20)]
    assert {int(f) for f in flips} == {0, 255}  # both sides show up: half the clips are mirrored
    never = [train_view(clip, (32, 32), np.random.default_rng(s), False, False)[0, :, :16].mean() for s in range(5)]
    assert min(never) == 255  # flip off: the white half stays on the left


def test_lying_header_is_sampled_over_the_true_length() -> None:
    lengths: dict = {}
    views = segment_views(VIDEOS / "tree.avi", "videos", 8, (48, 48), "segments", clips=2, crops=3, lengths=lengths)
    assert views.shape == (6, 8, 48, 48, 3)
    assert lengths[str(VIDEOS / "tree.avi")] == 68  # header says 444
    train = segment_views(VIDEOS / "Megamind.avi", "videos", 8, (64, 64), "segments", rng=np.random.default_rng(0))
    assert train.shape == (1, 8, 64, 64, 3) and train.std() > 0


def test_zero_frame_video_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "cut.avi"
    bad.write_bytes((VIDEOS / "Megamind.avi").read_bytes()[:6000])
    with pytest.raises(VidcliError, match="cut.avi"):
        segment_views(bad, "videos", 8, (32, 32), "segments")


# ---------------------------------------------------------------- frames layout and its bad inputs


def _frames_dataset(tiny_data: Path, root: Path) -> Path:
    """The tiny videos as TSM frame folders with list files, the layout `vidcli data kinetics-frames` writes."""
    classes = sorted(p.name for p in (tiny_data / "train").iterdir())
    (root / "classes.txt").parent.mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("\n".join(classes) + "\n")
    for split in ("train", "val", "test"):
        lines = []
        for label, name in enumerate(classes):
            for video in sorted((tiny_data / split / name).iterdir()):
                n, _ = framesmod.write_frame_folder(video, root / split / video.stem, short_side=None, height=None,
                                                    quality=90)
                lines.append(f"{split}/{video.stem} {n} {label}")
        (root / f"{split}_list.txt").write_text("\n".join(lines) + "\n")
    return root


@pytest.mark.slow
def test_frames_layout_trains_and_names_bad_inputs(tiny_data: Path, tmp_path: Path) -> None:
    root = _frames_dataset(tiny_data, tmp_path / "frames")
    run = _train(tmp_path, tsm_recipe(root, epochs=1, fmt="frames"), tmp_path / "runs")
    assert run.state["status"] == "finished" and run.file("best.pt").is_file()
    rec = recipe_mod.from_dict(recipe_mod.DataConfig, tsm_recipe(root, fmt="frames")["data"])
    src = open_source(rec, "test")
    assert src.load_views(0, clips=2, crops=3).shape == (6, 4, 32, 32, 3)

    lines = (root / "train_list.txt").read_text().splitlines()
    (root / "train_list.txt").write_text("\n".join(lines[:2] + ["broken line"] + lines[2:]) + "\n")
    with pytest.raises(VidcliError, match=r"train_list.txt:3: expected"):
        open_source(rec, "train")
    first = root / src.items[0].relative_to(root)
    (first / "img_00002.jpg").unlink()
    (first / "img_00007.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(VidcliError, match=r"img_00002.jpg: frame missing"):
        src.load_views(0)
    (first / "img_00002.jpg").write_bytes(b"")
    with pytest.raises(VidcliError, match=r"img_0000[27].jpg: frame not a readable JPEG"):
        src.load_views(0)


# ---------------------------------------------------------------- training, checkpoints, resume


@pytest.mark.slow
def test_training_writes_history_state_and_checkpoints(tsm_run: Path) -> None:
    run = Run.open(tsm_run)
    state = run.state
    assert state["status"] == "finished" and state["epochs_done"] == 2 and state["backend"] == "torch"
    assert state["monitor"] == "val_accuracy" and state["best_epoch"] in (1, 2)
    head, *rows = run.file("history.csv").read_text().splitlines()
    assert head == "epoch,loss,accuracy,val_loss,val_accuracy,lr,seconds" and len(rows) == 2
    assert [float(r.split(",")[5]) for r in rows] == pytest.approx([0.01, 0.001])  # step schedule at epoch 1
    ck = torch.load(run.file("last.pt"), map_location="cpu", weights_only=True)
    assert ck["epoch"] == 2 and ck["format"] == backend.FORMAT and ck["params"]["width"] == 8
    assert {"optimizer", "state", "rng"} <= set(ck) and set(ck["rng"]) >= {"torch", "numpy", "python"}
    assert ck["state"]["epoch"] == 2 and len(ck["state"]["history"]) == 2  # the run's state travels inside
    lrs = sorted({g["lr_mult"] for g in ck["optimizer"]["param_groups"]})
    assert lrs == [1.0, 5.0, 10.0]  # backbone, head weight, head bias
    assert run.file("training_curves.png").is_file()
    assert not list(tsm_run.glob(".*partial*"))


@pytest.mark.slow
def test_resume_equals_an_uninterrupted_run(tsm_run: Path, tiny_data: Path, tmp_path: Path) -> None:
    raw = tsm_recipe(tiny_data, epochs=1)
    half = _train(tmp_path, raw, tmp_path / "runs")
    assert half.state["epochs_done"] == 1
    resumed = _train(tmp_path, raw, tmp_path / "runs", resume=half.path, overrides=["train.epochs=2"])
    assert resumed.state["epochs_done"] == 2
    a, b = _weights(tsm_run / "last.pt"), _weights(resumed.file("last.pt"))
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from the uninterrupted run"
    assert len(resumed.file("history.csv").read_text().splitlines()) == 3


@pytest.mark.slow
def test_ctrl_c_leaves_a_resumable_run(tiny_data: Path, tmp_path: Path, monkeypatch) -> None:
    real = backend._Trainer.epoch
    calls = []

    def interrupt_second(self, model, opt, epoch):
        calls.append(epoch)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, model, opt, epoch)

    monkeypatch.setattr(backend._Trainer, "epoch", interrupt_second)
    with pytest.raises(VidcliError, match="resume with") as exc:
        _train(tmp_path, tsm_recipe(tiny_data, epochs=3), tmp_path / "runs")
    assert exc.value.exit_code == 130
    run = Run(tmp_path / "runs" / "tsm_tiny" / "1")
    assert run.state["status"] == "interrupted" and run.state["epochs_done"] == 1
    assert torch.load(run.file("last.pt"), map_location="cpu", weights_only=True)["epoch"] == 1
    monkeypatch.setattr(backend._Trainer, "epoch", real)
    _train(tmp_path, {}, tmp_path / "runs", resume=run.path, overrides=["train.epochs=2"])
    assert run.state["status"] == "finished" and run.state["epochs_done"] == 2


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_bad_checkpoints_are_named(tsm_run: Path, tmp_path: Path) -> None:
    params = Run.open(tsm_run).recipe
    not_ckpt = tmp_path / "object.pt"
    not_ckpt.write_bytes(pickle.dumps({"model": Path("x")}))
    with pytest.raises(VidcliError, match="object.pt: "):
        backend.load_checkpoint(not_ckpt, params)
    release = tmp_path / "release.pth"
    torch.save({"arch": "resnet50", "state_dict": {"module.new_fc.bias": torch.zeros(3)}}, release)
    with pytest.raises(VidcliError, match="give it as model.pretrained"):
        backend.load_checkpoint(release, params)
    other = tmp_path / "other.pt"
    ck = torch.load(tsm_run / "last.pt", map_location="cpu", weights_only=True)
    torch.save({**ck, "arch": "r2plus1d"}, other)
    with pytest.raises(VidcliError, match="arch 'r2plus1d'"):
        backend.load_checkpoint(other, params)
    torch.save({**ck, "params": {**ck["params"], "width": 16}}, other)
    with pytest.raises(VidcliError, match="width=16"):
        backend.load_checkpoint(other, params)
    mobilenet = tmp_path / "TSM_mobilenet.pth"
    torch.save({"epoch": 1, "arch": "mobilenetv2", "state_dict": {"module.new_fc.bias": torch.zeros(3)}}, mobilenet)
    rec = recipe_mod.from_dict(recipe_mod.Recipe, {"name": "x", "data": {"frames": 8},
                                                     "model": {"arch": "tsm", "pretrained": str(mobilenet)}})
    with pytest.raises(VidcliError, match="arch 'mobilenetv2'"):
        backend.BACKEND.build(rec, 3, (8, 32, 32, 3))


@pytest.mark.slow
def test_pretrained_kinetics_checkpoint_fine_tunes_to_new_classes() -> None:
    ckpt = fixture_path(*FIXTURE_CKPT)
    rec = recipe_mod.load(Path(__file__).resolve().parents[1] / "recipes" / "tsm_r50_kinetics.yaml",
                          [f"model.pretrained={ckpt}"])
    model = backend.BACKEND.build(rec, 5, (8, 224, 224, 3))
    assert model.new_fc.out_features == 5 and model.partial_bn
    ref = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    key = "base_model.layer1.0.conv1.net.weight"
    assert torch.equal(model.state_dict()[key], ref["module." + key])
    both = recipe_mod.from_dict(recipe_mod.Recipe, {"name": "x", "data": {"frames": 8}, "model": {
        "arch": "tsm", "pretrained": "a.pth", "params": {"pretrained": "b.pth"}}})
    with pytest.raises(VidcliError, match="both set"):
        backend.params_of(both)


# ---------------------------------------------------------------- eval views, export, predict


@pytest.mark.slow
def test_eval_clips_and_crops(tsm_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(tsm_run, run)
    runner = CliRunner()
    one = runner.invoke(app, ["eval", str(run), "--json"])
    assert one.exit_code == 0, one.output
    many = runner.invoke(app, ["eval", str(run), "--clips", "2", "--crops", "3", "--json"])
    assert many.exit_code == 0, many.output
    assert json.loads(many.stdout)["num_samples"] == json.loads(one.stdout)["num_samples"] == 6
    assert (run / "predictions" / "test_2x3.npz").is_file() and (run / "predictions" / "test.npz").is_file()
    bad = runner.invoke(app, ["eval", str(run), "--crops", "4"])
    assert bad.exit_code == 2 and "crops must be one of" in bad.stderr


@pytest.mark.slow
def test_export_is_pure_slices_with_dynamic_batch_and_predict_needs_no_torch(tsm_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(tsm_run, run)
    result = export(Run.open(run))
    assert result["max_abs_diff"] <= 1e-4 and result["metadata"]["sampling"] == "segments"
    proto = onnx.load(str(run / "model.onnx"))
    ops = {n.op_type for n in proto.graph.node}
    assert {"Slice", "Concat"} <= ops and not ops & {"ScatterND", "ScatterElements", "Scatter"}
    for init in proto.graph.initializer:
        arr = onnx.numpy_helper.to_array(init)
        assert not (arr.size >= 64 and not arr.any()), f"zero constant {init.name} {arr.shape}"
    session = ort.InferenceSession(str(run / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["video"] and session.get_outputs()[0].name == "logits"
    x = np.random.default_rng(0).standard_normal((3, 4 * 3, 32, 32)).astype(np.float32)  # TSN's (N, T*C, H, W)
    r = Run.open(run)
    model = backend.BACKEND.load(r.file("best.pt"), r.recipe, len(r.labels))
    card = models.run_card(r)
    np.testing.assert_allclose(session.run(None, {"video": x})[0], backend.BACKEND.forward(model, card)(x), atol=1e-4)

    clip = sorted((Path(Run.open(run).recipe.data.root) / "test").rglob("*.avi"))[0]
    code = (
        "import sys, json; from pathlib import Path; from vidcli import inference, models\n"
        f"m = models.open_model(models.resolve(Path({str(run / 'model.onnx')!r})))\n"
        f"r = list(inference.predict(m, [Path({str(clip)!r})], 2, clips=2))[0]\n"
        "print(json.dumps({'torch': 'torch' in sys.modules, 'clips': r['clips'], 'k': len(r['top_k'])}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.splitlines()[-1]) == {"torch": False, "clips": 2, "k": 2}

    # Same sampling as training: ONNX on predict's input equals PyTorch on the evaluation pipeline's views.
    from vidcli import inference

    onnx_model = inference.OnnxModel(run / "model.onnx")
    x = onnx_model.card.preprocess(inference.load_input(clip, onnx_model.card, 1))
    rec = Run.open(run).recipe
    src = open_source(rec.data, "test", Run.open(run).labels)
    i = [str(p) for p in src.items].index(str(clip))
    ref = tdata.to_input(torch.from_numpy(src.load_views(i)), onnx_model.card).numpy()  # training's input
    np.testing.assert_allclose(x, ref.reshape(x.shape), atol=1e-5)


def test_num_segments_must_match_frames(tiny_data: Path, tmp_path: Path) -> None:
    raw = tsm_recipe(tiny_data)
    raw["data"]["frames"] = 6
    with pytest.raises(VidcliError, match="num_segments"):
        _train(tmp_path, raw, tmp_path / "runs")
    assert not (tmp_path / "runs" / "tsm_tiny" / "1").exists()
