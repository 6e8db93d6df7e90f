"""MoViNet end to end: tutorial recipes, partial unfreezing, stream export and `predict --stream`, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import fixture_path, plain_onnx_model
from typer.testing import CliRunner

from vidcli import recipe as recipe_mod
from vidcli import streaming
from vidcli.cli.main import app
from vidcli.errors import VidcliError

REPO = Path(__file__).resolve().parents[1]
ATOL = 1e-4


def tarball(variant: str) -> Path:
    return fixture_path("movinet", f"movinet_a0_{variant}.tar.gz")


def tiny_overrides(data: Path, variant: str, **extra: str) -> list[str]:
    """The recipe's mechanics at toy size: 4 frames of 32x32, the fixture checkpoint, one epoch."""
    values = {"data.root": str(data), "data.size": "[32, 32]", "data.frames": "4", "data.frame_step": "2",
              "train.batch_size": "6", "train.epochs": "1", "train.tensorboard": "false",
              "model.pretrained": str(tarball(variant)), **extra}
    return [f"{k}={v}" for k, v in values.items()]


# -- recipes and unfreezing (fast) -------------------------------------------------------------------


def _streams(rec) -> bool:
    from vidcli.backends import registry

    return registry.spec(rec.model.arch).is_stream(registry.check_recipe(rec))


def test_recipes_follow_the_tutorial():
    from vidcli.backends.keras.movinet import MovinetParams

    base = recipe_mod.load(REPO / "recipes" / "movinet_a0.yaml")
    assert (base.data.frames, base.data.frame_step, base.data.size) == (8, 15, (224, 224))
    assert (base.train.batch_size, base.train.epochs, base.train.learning_rate) == (8, 2, 1e-3)
    assert base.model.pretrained == "movinet_a0_base" and not _streams(base)
    params = MovinetParams.from_mapping(base.model.params)
    assert params.freeze_backbone and params.model_id == "a0" and params.dropout == 0.0 and not params.causal
    stream = recipe_mod.load(REPO / "recipes" / "movinet_a0_stream.yaml")
    assert stream.model.pretrained == "movinet_a0_stream" and _streams(stream)
    assert MovinetParams.from_mapping(stream.model.params).causal


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"trainable_blocks": 2}, "trainable_blocks: expected unset unless freeze_backbone is true"),
        ({"freeze_backbone": True, "trainable_blocks": 6}, "trainable_blocks: expected an integer in [0, 5]"),
        ({"freeze_backbone": True, "trainable_blocks": True}, "trainable_blocks"),
    ],
)
def test_trainable_blocks_is_checked(values, message):
    from vidcli.backends.keras.movinet import MovinetParams

    with pytest.raises(VidcliError) as err:
        MovinetParams.from_mapping(values)
    assert message in str(err.value)


def test_trainable_blocks_unfreezes_the_last_blocks_and_head():
    from vidcli.backends.keras import movinet

    params = movinet.MovinetParams(freeze_backbone=True, trainable_blocks=1)
    model = movinet.build(params, 3, (None, 32, 32, 3))
    trainable = {layer.name for layer in model.layers if layer.trainable and layer.weights}
    assert trainable == {f"block4_layer{i}" for i in range(4)} | {"head", "classifier_head"}
    assert model.get_config()["trainable_blocks"] == 1 and model.params.trainable_blocks == 1


# -- bad checkpoints and downloads (fast) ------------------------------------------------------------


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("VIDCLI_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "movinet"


@pytest.mark.parametrize(
    ("model_id", "causal", "variant", "said"),
    [pytest.param("a2", False, "base", "movinet a0 base checkpoint, the model is a2 base", marks=pytest.mark.slow),
     ("a0", True, "base", "movinet a0 base checkpoint, the model is a0 stream")],
)
def test_checkpoint_of_another_model_names_the_mismatch(cache, model_id, causal, variant, said):
    from vidcli.backends.keras import movinet, movinet_import

    params = movinet.MovinetParams(model_id=model_id, causal=causal)
    model = movinet.build(params, 3, (None, 32, 32, 3))
    with pytest.raises(VidcliError) as err:
        movinet_import.load_pretrained(model, str(tarball(variant)), params)
    message = str(err.value)
    assert said in message and f"movinet_{model_id}_{'stream' if causal else 'base'}" in message
    assert message.count("\n") == 0


def _leftovers(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.rglob("*") if p.is_file()) if cache.exists() else []


def test_url_answering_404_leaves_the_cache_clean(cache):
    from httpserver import FileServer

    from vidcli.backends.keras.movinet_import import resolve_checkpoint

    with FileServer({}) as server:
        url = server.url("/movinet/movinet_a0_base.tar.gz")
        with pytest.raises(VidcliError) as err:
            resolve_checkpoint(url)
    assert "HTTP 404" in str(err.value) and url in str(err.value)
    assert _leftovers(cache) == []


def test_truncated_download_is_an_error_and_is_not_reused(cache):
    from httpserver import FileServer

    from vidcli.backends.keras.movinet_import import resolve_checkpoint

    payload = tarball("base").read_bytes()
    with FileServer({"/m/movinet_a0_base.tar.gz": payload[:200_000]}) as server:
        url = server.url("/m/movinet_a0_base.tar.gz")
        with pytest.raises(VidcliError, match="not a readable .tar.gz checkpoint.*removed from the cache"):
            resolve_checkpoint(url)
        assert _leftovers(cache) == []
        server.files["/m/movinet_a0_base.tar.gz"] = payload
        prefix = resolve_checkpoint(url)
    assert Path(prefix + ".index").is_file()
    assert not [p for p in (cache / "extracted").iterdir() if ".partial-" in p.name]


def test_interrupted_download_is_resumed_by_the_next_call(cache):
    from httpserver import FileServer

    from vidcli.backends.keras.movinet_import import resolve_checkpoint

    payload = tarball("stream").read_bytes()
    with FileServer({"/m/movinet_a0_stream.tar.gz": payload}) as server:
        server.drop_after, server.drops = 1_000_000, None
        url = server.url("/m/movinet_a0_stream.tar.gz")
        with pytest.raises(VidcliError, match="interrupted"):
            resolve_checkpoint(url)
        downloads = cache / "downloads"
        assert not (downloads / "movinet_a0_stream.tar.gz").exists()
        kept = (downloads / "movinet_a0_stream.tar.gz.partial").stat().st_size
        assert 0 < kept < len(payload)
        server.drop_after = None
        prefix = resolve_checkpoint(url)
        assert server.gets()[-1].range == f"bytes={kept}-"
    assert (downloads / "movinet_a0_stream.tar.gz").read_bytes() == payload
    assert _leftovers(downloads) == ["movinet_a0_stream.tar.gz"]
    assert Path(prefix + ".index").is_file()


def test_stale_cache_file_from_an_interrupted_copy_is_replaced(cache):
    from httpserver import FileServer

    from vidcli.backends.keras.movinet_import import resolve_checkpoint

    payload = tarball("base").read_bytes()
    stale = cache / "downloads" / "movinet_a0_base.tar.gz"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(payload[:50_000])
    with FileServer({"/movinet_a0_base.tar.gz": payload}) as server:
        with pytest.raises(VidcliError, match="removed from the cache"):
            resolve_checkpoint(server.url("/movinet_a0_base.tar.gz"))
        assert not stale.exists()
        assert Path(resolve_checkpoint(server.url("/movinet_a0_base.tar.gz")) + ".index").is_file()
    assert stale.read_bytes() == payload


# -- stream models, ONNX side (fast) -----------------------------------------------------------------


def _plain_onnx(path: Path) -> Path:
    """A tiny non-stream ONNX classifier with vidcli metadata (what exporting a base model gives)."""
    return plain_onnx_model(path, ["a", "b", "c"], input_name="image")


def test_stream_predict_refuses_a_base_model(tmp_path, testdata):
    model = _plain_onnx(tmp_path / "base.onnx")
    with pytest.raises(VidcliError, match="not a stream model"):
        streaming.OnnxStream(model)
    result = CliRunner().invoke(app, ["predict", str(testdata / "videos" / "box.mp4"), "--stream", "-m", str(model)])
    assert result.exit_code == 2 and "not a stream model" in result.stderr


# -- end to end (slow: trains and exports) -----------------------------------------------------------


@pytest.fixture(scope="module")
def stream_run(tiny_data, tmp_path_factory) -> Path:
    """The stream recipe trained for one epoch at toy size and exported to its run folder's model.onnx."""
    from vidcli import exporting, training
    from vidcli.runs import Run

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VIDCLI_CACHE", str(tmp_path_factory.mktemp("cache")))
        runs_dir = tmp_path_factory.mktemp("runs")
        run = training.train(REPO / "recipes" / "movinet_a0_stream.yaml", tiny_overrides(tiny_data, "stream"),
                             None, runs_dir)
        result = exporting.export(Run.open(run.path))
    assert result["stream"] and result["max_abs_diff"] <= ATOL
    return run.path


@pytest.mark.slow
def test_stream_onnx_has_states_as_inputs_and_outputs(stream_run):
    from vidcli.backends.keras import movinet
    from vidcli.runs import Run

    proto = onnx.load(stream_run / "model.onnx")
    meta = {p.key: p.value for p in proto.metadata_props}
    states = json.loads(meta["stream_states"])
    expected = movinet.state_shapes(movinet.MovinetParams(causal=True), 1, 32, 32)
    assert {s["name"]: (tuple(s["shape"]), s["dtype"]) for s in states} == expected
    inputs = {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim] for i in proto.graph.input}
    assert inputs.pop("image") == [1, 1, 32, 32, 3]
    assert set(inputs) == set(expected)
    assert [o.name for o in proto.graph.output] == ["logits", *(s["output"] for s in states)]
    assert json.loads(meta["labels"]) == Run.open(stream_run).labels and meta["stream"] == "true"


@pytest.mark.slow
def test_frame_by_frame_logits_equal_whole_clip_logits(stream_run, tiny_data):
    from vidcli import models
    from vidcli.backends.keras.movinet import MovinetClassifier

    onnx_model = streaming.OnnxStream(stream_run / "model.onnx")
    keras_model = models.open_stream(models.resolve(stream_run, checkpoint="best"))  # Keras, frame by frame
    trained = keras_model._stream.model  # built for 4-frame clips; the same weights in a model that takes any length:
    whole_clip = MovinetClassifier.from_config({**trained.get_config(), "clip_shape": (None, 32, 32, 3)})
    whole_clip.set_weights(trained.get_weights())
    clip = sorted((tiny_data / "test").rglob("*.avi"))[0]
    frames = np.stack([f for _, f in streaming.stream_frames(clip, onnx_model.card)])
    x = onnx_model.card.preprocess(frames[None])
    states, kstates = onnx_model.initial_states(), keras_model.initial_states()
    for t in range(x.shape[1]):
        logits, states = onnx_model.step(x[:, t : t + 1], states)
        klogits, kstates = keras_model.step(x[:, t : t + 1], kstates)
        whole = whole_clip(x[:, : t + 1], training=False).numpy()
        np.testing.assert_allclose(logits, whole, rtol=0, atol=ATOL)
        np.testing.assert_allclose(klogits, whole, rtol=0, atol=ATOL)


@pytest.mark.slow
def test_predict_stream_json_is_one_line_per_frame(stream_run, tiny_data):
    clip = sorted((tiny_data / "test").rglob("*.avi"))[0]
    args = ["predict", str(clip), "--stream", "--json", "-k", "2", "-m", str(stream_run / "model.onnx")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["frame"] for r in lines] == [0, 2, 4, 6]
    assert all(len(r["top_k"]) == 2 and r["source"] == str(clip) for r in lines)
    clip_args = ["predict", str(clip), "--json", "-k", "2", "-m", str(stream_run / "model.onnx")]
    whole = CliRunner().invoke(app, clip_args)  # without --stream: the clip's frames 0, 2, 4, 6 streamed
    assert whole.exit_code == 0, whole.stderr
    got, want = json.loads(whole.stdout)["top_k"], lines[-1]["top_k"]
    assert [g["label"] for g in got] == [w["label"] for w in want]
    assert [g["probability"] for g in got] == pytest.approx([w["probability"] for w in want], abs=1e-5)
    text = CliRunner().invoke(app, ["predict", str(clip), "--stream", "-m", str(stream_run)])
    assert text.exit_code == 0 and "(4 frames streamed)" in text.stdout
    assert lines[-1]["top_k"][0]["label"] in text.stdout


@pytest.mark.slow
def test_predict_stream_from_onnx_imports_no_framework(stream_run, testdata):
    probe = (
        "import sys\nfrom vidcli.cli.main import main\nsys.argv = ['vidcli', *sys.argv[1:]]\n"
        "try:\n    main()\nexcept SystemExit as exc:\n    code = exc.code\n"
        "bad = [m for m in ('tensorflow', 'keras', 'torch') if m in sys.modules]\n"
        "sys.stderr.write('IMPORTED:' + ','.join(bad) + '\\n')\nsys.exit(code)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    args = [str(testdata / "videos" / "tree.avi"), "--stream", "--json", "-m", str(stream_run / "model.onnx")]
    done = subprocess.run([sys.executable, "-c", probe, "predict", *args], capture_output=True, text=True,
                          env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "IMPORTED:\n" in done.stderr
    assert len(done.stdout.splitlines()) == 34  # 68 frames decode, every 2nd is fed


@pytest.mark.slow
def test_stream_model_fed_the_wrong_size_is_a_clear_error(stream_run, tmp_path):
    model = streaming.OnnxStream(stream_run / "model.onnx")
    states = model.initial_states()
    expected = r"takes one frame as float32 \(1, 1, 32, 32, 3\), got float32 \(1, 1, 40, 32, 3\)"
    with pytest.raises(VidcliError, match=expected):
        model.step(np.zeros((1, 1, 40, 32, 3), np.float32), states)
    with pytest.raises(VidcliError, match=r"got float32 \(1, 4, 32, 32, 3\)"):
        model.step(np.zeros((1, 4, 32, 32, 3), np.float32), states)
    np.save(tmp_path / "v.npy", np.zeros((4, 32, 32), np.uint8))
    result = CliRunner().invoke(app, ["predict", str(tmp_path / "v.npy"), "--stream", "-m", str(stream_run)])
    assert result.exit_code == 2 and "--stream takes videos" in result.stderr


@pytest.mark.slow
def test_base_recipe_trains_exports_and_predicts(tiny_data, tmp_path, monkeypatch, testdata):
    """The tutorial recipe with one unfrozen block: the frozen blocks keep the checkpoint, the export agrees."""
    import keras
    import tensorflow as tf

    from vidcli import exporting, training
    from vidcli.backends.keras.movinet_import import resolve_checkpoint
    from vidcli.runs import Run

    monkeypatch.setenv("VIDCLI_CACHE", str(tmp_path / "cache"))
    overrides = tiny_overrides(tiny_data, "base", **{"model.params.trainable_blocks": "1", "data.frames": "2"})
    run = training.train(REPO / "recipes" / "movinet_a0.yaml", overrides, None, tmp_path / "runs")
    model = keras.saving.load_model(run.file("last.keras"))

    reader = tf.train.load_checkpoint(resolve_checkpoint(str(tarball("base"))))
    stem = "model/layer_with_weights-0/layer_with_weights-0/_stem/_conv/kernel/.ATTRIBUTES/VARIABLE_VALUE"
    np.testing.assert_array_equal(model.get_layer("stem").kernel.numpy(), reader.get_tensor(stem))
    last = "model/layer_with_weights-0/layer_with_weights-15/_projection/_conv/kernel/.ATTRIBUTES/VARIABLE_VALUE"
    assert not np.allclose(model.get_layer("block4_layer3").projection.kernel.numpy(), reader.get_tensor(last))
    result = exporting.export(Run.open(run.path))
    assert result["max_abs_diff"] <= ATOL and "stream" not in result["metadata"]
    out = CliRunner().invoke(app, ["predict", str(testdata / "videos" / "box.mp4"), "--json", "-m", result["path"]])
    assert out.exit_code == 0 and len(json.loads(out.stdout)["top_k"]) == 3


@pytest.mark.slow
def test_a_stream_model_trained_in_mixed_precision_evaluates_and_streams_in_float32(tiny_data, tmp_path,
                                                                                     monkeypatch):
    """Mixed precision is a training setting: the checkpoint loads for eval, the stream runs a float32 copy."""
    import keras

    from vidcli import evaluation, exporting, models, training
    from vidcli.runs import Run

    monkeypatch.setenv("VIDCLI_CACHE", str(tmp_path / "cache"))
    policy = keras.mixed_precision.global_policy()
    over = tiny_overrides(tiny_data, "stream", **{"train.precision": "mixed_bfloat16"})
    try:
        run = training.train(REPO / "recipes" / "movinet_a0_stream.yaml", over, None, tmp_path / "runs")
        keras.mixed_precision.set_global_policy("float32")  # as a later `vidcli eval` starts
        metrics = evaluation.evaluate(Run.open(run.path), split="test")
        assert 0 <= metrics["top1"] <= 1
        stream = models.open_stream(models.resolve(run.path, checkpoint="best"))._stream.model
        assert {layer.compute_dtype for layer in stream.layers} == {"float32"}
        result = exporting.export(Run.open(run.path))
        assert result["stream"] and result["max_abs_diff"] <= ATOL
    finally:
        keras.mixed_precision.set_global_policy(policy)
