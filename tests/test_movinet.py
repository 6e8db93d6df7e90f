"""MoViNet: conformance with the Model Garden reference (fixtures made by it), strict import, streaming."""

from __future__ import annotations

import io
import re
import sys
import tarfile
import types
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import fixture_path

from vidcli import fsio
from vidcli.backends.keras import movinet, movinet_import
from vidcli.backends.keras.movinet import MovinetParams
from vidcli.backends.keras.movinet_import import resolve_checkpoint
from vidcli.errors import VidcliError

SHAPE = (8, 64, 64, 3)
ATOL = 1e-4


def reference(variant: str) -> dict[str, np.ndarray]:
    with np.load(fixture_path("movinet", f"movinet_a0_{variant}_io.npz")) as data:
        return {k: data[k] for k in data.files}


def tarball(variant: str) -> str:
    return str(fixture_path("movinet", f"movinet_a0_{variant}.tar.gz"))


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        path = tmp_path_factory.mktemp("vidcli-cache")
        mp.setenv("VIDCLI_CACHE", str(path))
        yield path


@pytest.fixture(scope="module")
def base(cache) -> keras.Model:
    params = MovinetParams()
    model = movinet.build(params, 600, SHAPE)
    movinet_import.load_pretrained(model, tarball("base"), params)
    return model


@pytest.fixture(scope="module")
def stream(cache) -> keras.Model:
    params = MovinetParams(causal=True)
    model = movinet.build(params, 600, SHAPE)
    movinet_import.load_pretrained(model, tarball("stream"), params)
    return model


def checkpoint_tensors(variant: str) -> dict[str, np.ndarray]:
    reader = tf.train.load_checkpoint(resolve_checkpoint(tarball(variant)))
    names = [k for k in reader.get_variable_to_shape_map() if k != "_CHECKPOINTABLE_OBJECT_GRAPH"]
    return {k: reader.get_tensor(k) for k in names}


def write_checkpoint(folder: Path, tensors: dict[str, np.ndarray]) -> Path:
    """A TF checkpoint with exactly these keys (what a doctored or foreign release would hold)."""
    folder.mkdir(parents=True)
    names = sorted(tensors)
    tf.raw_ops.SaveV2(
        prefix=str(folder / "ckpt-1"),
        tensor_names=names,
        shape_and_slices=[""] * len(names),
        tensors=[tf.constant(tensors[n]) for n in names],
    )
    return folder


# -- params ------------------------------------------------------------------------------------------


def test_params_defaults_follow_the_reference():
    b = MovinetParams().resolved()
    assert (b.conv_type, b.se_type, b.activation, b.gating_activation) == ("3d", "3d", "swish", "sigmoid")
    assert b.use_positional_encoding is False and b.dropout == 0.5
    s = MovinetParams(model_id="a2", causal=True).resolved()
    assert (s.conv_type, s.se_type, s.activation, s.gating_activation) == (
        "2plus1d",
        "2plus3d",
        "hard_swish",
        "hard_sigmoid",
    )
    assert s.use_positional_encoding is False
    assert MovinetParams(model_id="a3", causal=True).resolved().use_positional_encoding is True
    assert movinet.Params is MovinetParams


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"model_id": "a9"}, "model.params.model_id: expected one of a0..a5, got 'a9'"),
        ({"conv_type": "4d"}, "model.params.conv_type: expected one of 3d, 2plus1d, 3d_2plus1d, got '4d'"),
        ({"se_type": "x"}, "model.params.se_type"),
        ({"activation": "gelu"}, "model.params.activation"),
        ({"gating_activation": "relu"}, "model.params.gating_activation"),
        ({"dropout": 1.5}, "model.params.dropout"),
        ({"causal": "yes"}, "model.params.causal"),
        ({"use_positional_encoding": True}, "model.params.use_positional_encoding"),
    ],
)
def test_params_errors_name_the_field(kwargs, message):
    with pytest.raises(VidcliError) as err:
        movinet.build(MovinetParams(**kwargs), 10, SHAPE)
    assert message in str(err.value)


def test_params_from_mapping_rejects_unknown_keys():
    assert MovinetParams.from_mapping({"model_id": "a1"}).model_id == "a1"
    with pytest.raises(VidcliError, match=r"model.params.depth: unknown"):
        MovinetParams.from_mapping({"depth": 3})


@pytest.mark.parametrize("shape", [(8, 64, 64), (8, 64, 64, 1), (0, 64, 64, 3), ("8", 64, 64, 3)])
def test_build_rejects_bad_input_shape(shape):
    with pytest.raises(VidcliError, match="input_shape"):
        movinet.build(MovinetParams(), 10, shape)


def test_streaming_needs_a_stream_model():
    with pytest.raises(VidcliError, match="causal"):
        movinet.init_states(MovinetParams(), 1, 1, 64, 64)


# -- conformance -------------------------------------------------------------------------------------


def test_a0_base_matches_reference(base):
    ref = reference("base")
    assert base.count_params() == 3_126_071
    logits = base(ref["x"], training=False).numpy()
    np.testing.assert_allclose(logits, ref["logits"], rtol=0, atol=ATOL)


def test_a0_stream_matches_reference(stream):
    ref = reference("stream")
    assert stream.count_params() == 3_765_983
    logits = stream(ref["x"], training=False).numpy()
    np.testing.assert_allclose(logits, ref["logits"], rtol=0, atol=ATOL)


def test_a0_stream_frame_by_frame_matches_reference(stream):
    ref = reference("stream")
    x = ref["x"]
    states = movinet.init_states(stream, batch=2, frames=1, height=64, width=64)
    expected = {k.split("/", 1)[1]: v for k, v in ref.items() if k.startswith("init_state/")}
    assert sorted(states) == sorted(expected)
    for name, value in expected.items():
        assert tuple(states[name].shape) == value.shape and states[name].dtype == value.dtype, name
    step = movinet.stream_fn(stream, compiled=False)
    initial = states
    for t in range(x.shape[1]):
        logits, states = step(x[:, t : t + 1], states)
        np.testing.assert_allclose(logits.numpy(), ref["logits_stream_frames"][t], rtol=0, atol=ATOL)
    for name in states:
        np.testing.assert_allclose(np.asarray(states[name]), ref[f"final_state/{name}"], rtol=0, atol=ATOL)
    clip_logits, _ = step(x, initial)
    np.testing.assert_allclose(clip_logits.numpy(), ref["logits_clip_states"], rtol=0, atol=ATOL)
    first, mid = stream.call_with_states(x[:, :3], initial)
    rest, _ = stream.call_with_states(x[:, 3:], mid)
    np.testing.assert_allclose(rest.numpy(), ref["logits_stream"], rtol=0, atol=ATOL)


# -- strict import -----------------------------------------------------------------------------------


def test_other_variant_is_refused_and_nothing_changes(base):
    before = [v.numpy().copy() for v in base.weights[:5]]
    with pytest.raises(VidcliError) as err:
        movinet_import.load_pretrained(base, tarball("stream"), MovinetParams())
    message = str(err.value)
    assert "checkpoint variables not in the model" in message
    assert "model variables not in the checkpoint" in message
    assert "_stem/_conv/_conv/kernel" in message and "_stem/_conv/kernel," in message
    assert re.search(r"not in the model \(\d+: .* and \d+ more\)", message)
    for old, var in zip(before, base.weights[:5], strict=True):
        np.testing.assert_array_equal(old, var.numpy())


def test_doctored_checkpoint_lists_each_problem(base, tmp_path):
    tensors = checkpoint_tensors("base")
    suffix = "/.ATTRIBUTES/VARIABLE_VALUE"
    dropped = "model/layer_with_weights-0/layer_with_weights-3/_mobile_bottleneck/_rezero/scale" + suffix
    reshaped = "model/layer_with_weights-0/layer_with_weights-0/_stem/_conv/kernel" + suffix
    del tensors[dropped]
    tensors[reshaped] = np.zeros((1, 3, 3, 3, 16), np.float32)
    tensors["model/layer_with_weights-0/extra/.ATTRIBUTES/VARIABLE_VALUE"] = np.zeros(3, np.float32)
    tensors["optimizer/iter/.ATTRIBUTES/VARIABLE_VALUE"] = np.int64(7)
    folder = write_checkpoint(tmp_path / "doctored", tensors)
    with pytest.raises(VidcliError) as err:
        movinet_import.load_pretrained(base, str(folder), MovinetParams())
    message = str(err.value)
    assert "layer_with_weights-3/_mobile_bottleneck/_rezero/scale" in message
    assert "_stem/_conv/kernel [1, 3, 3, 3, 16] vs [1, 3, 3, 3, 8]" in message
    assert "layer_with_weights-0/extra" in message
    assert "optimizer" not in message


def test_classifier_head_with_other_class_count_is_left_alone(base, tmp_path, capsys):
    tensors = checkpoint_tensors("base")
    head = "model/layer_with_weights-1/_classifier/_conv/"
    tensors[head + "kernel/.ATTRIBUTES/VARIABLE_VALUE"] = np.ones((1, 1, 1, 2048, 7), np.float32)
    tensors[head + "bias/.ATTRIBUTES/VARIABLE_VALUE"] = np.ones(7, np.float32)
    classifier = base.classifier_head.classifier.kernel
    before = classifier.numpy().copy()
    movinet_import.load_pretrained(base, str(write_checkpoint(tmp_path / "k7", tensors)), MovinetParams())
    np.testing.assert_array_equal(classifier.numpy(), before)
    assert "freshly initialised (7 classes in the checkpoint, 600 in the model)" in " ".join(
        capsys.readouterr().err.split()
    )


# -- sources -----------------------------------------------------------------------------------------


def test_tarball_is_extracted_once_into_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VIDCLI_CACHE", str(tmp_path))
    first = resolve_checkpoint(tarball("base"))
    assert Path(first).name == "ckpt-1" and Path(first + ".index").is_file()
    assert Path(first).is_relative_to(tmp_path / "movinet" / "extracted")
    assert resolve_checkpoint(tarball("base")) == first
    assert not [p for p in (tmp_path / "movinet" / "extracted").iterdir() if ".partial-" in p.name]
    assert resolve_checkpoint(str(Path(first).parent)) == first
    assert resolve_checkpoint(first + ".index") == first


def _tar_with(path: Path, member: tarfile.TarInfo, data: bytes = b"x") -> Path:
    with tarfile.open(path, "w:gz") as tar:
        member.size = len(data) if member.isfile() else 0
        tar.addfile(member, io.BytesIO(data) if member.isfile() else None)
    return path


@pytest.mark.parametrize("name", ["../evil.index", "/tmp/evil.index", "a/../../evil.index"])
def test_unsafe_tar_members_are_refused(tmp_path, monkeypatch, name):
    monkeypatch.setenv("VIDCLI_CACHE", str(tmp_path / "cache"))
    bad = _tar_with(tmp_path / "bad.tar.gz", tarfile.TarInfo(name))
    with pytest.raises(VidcliError, match="unsafe path"):
        resolve_checkpoint(str(bad))
    assert not (tmp_path / "evil.index").exists()


def test_links_in_tar_are_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("VIDCLI_CACHE", str(tmp_path / "cache"))
    link = tarfile.TarInfo("movinet/ckpt-1.index")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    with pytest.raises(VidcliError, match="link"):
        resolve_checkpoint(str(_tar_with(tmp_path / "link.tar.gz", link)))


def test_corrupt_or_missing_sources_are_user_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("VIDCLI_CACHE", str(tmp_path / "cache"))
    truncated = tmp_path / "movinet_a0_base.tar.gz"
    truncated.write_bytes(Path(tarball("base")).read_bytes()[:100_000])
    with pytest.raises(VidcliError, match="not a readable"):
        resolve_checkpoint(str(truncated))
    with pytest.raises(VidcliError, match="no such file"):
        resolve_checkpoint(str(tmp_path / "nothing.tar.gz"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(VidcliError, match="no TensorFlow checkpoint"):
        resolve_checkpoint(str(tmp_path / "empty"))


def test_release_name_downloads_the_release_url(tmp_path, monkeypatch):
    monkeypatch.setenv("VIDCLI_CACHE", str(tmp_path))
    calls = []

    def fake_download(url, dest, *, md5=None, description=None):
        calls.append((url, Path(dest)))
        Path(dest).parent.mkdir(parents=True, exist_ok=True)
        Path(dest).write_bytes(Path(tarball("stream")).read_bytes())
        return Path(dest)

    monkeypatch.setitem(sys.modules, "vidcli.download", types.SimpleNamespace(download=fake_download))
    prefix = resolve_checkpoint("movinet_a0_stream")
    assert calls == [
        (
            "https://storage.googleapis.com/tf_model_garden/vision/movinet/movinet_a0_stream.tar.gz",
            tmp_path / "movinet" / "downloads" / "movinet_a0_stream.tar.gz",
        )
    ]
    assert Path(prefix + ".index").is_file()


def test_url_is_downloaded_then_loaded(base, tmp_path, monkeypatch):
    from httpserver import FileServer

    monkeypatch.setenv("VIDCLI_CACHE", str(tmp_path))
    payload = Path(tarball("base")).read_bytes()
    with FileServer({"/rel/movinet_a0_base.tar.gz": payload}) as server:
        movinet_import.load_pretrained(base, server.url("/rel/movinet_a0_base.tar.gz"), MovinetParams())
    assert (tmp_path / "movinet" / "downloads" / "movinet_a0_base.tar.gz").read_bytes() == payload
    ref = reference("base")
    np.testing.assert_allclose(base(ref["x"], training=False).numpy(), ref["logits"], rtol=0, atol=ATOL)


# -- keras integration -------------------------------------------------------------------------------


@pytest.mark.slow
def test_keras_file_round_trip_keeps_outputs_and_streaming(stream, tmp_path):
    path = tmp_path / "movinet.keras"
    with fsio.atomic_path(path, suffix=".keras") as tmp:
        stream.save(tmp)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, movinet.MovinetClassifier) and loaded.causal
    x = reference("stream")["x"]
    np.testing.assert_allclose(loaded(x, training=False).numpy(), stream(x, training=False).numpy(), rtol=0, atol=1e-6)
    states = movinet.init_states(loaded, 2, 1, 64, 64)
    logits, _ = movinet.stream_fn(loaded)(x[:, :1], states)  # the traced tf.function
    np.testing.assert_allclose(logits.numpy(), reference("stream")["logits_stream_frames"][0], rtol=0, atol=ATOL)


@pytest.mark.slow
def test_transfer_learning_trains_only_the_head(cache, capsys):
    params = MovinetParams(freeze_backbone=True, dropout=0.2)
    model = movinet.build(params, 5, (4, 32, 32, 3))
    movinet_import.load_pretrained(model, tarball("base"), params)
    assert "classifier head left freshly initialised" in " ".join(capsys.readouterr().err.split())
    head = model.classifier_head
    assert {id(v) for v in model.trainable_weights} == {id(v) for v in head.weights}
    frozen = {v.path: v.numpy().copy() for v in model.weights if not v.path.startswith(head.name)}
    before = head.classifier.kernel.numpy().copy()
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    rng = np.random.default_rng(0)
    model.fit(rng.random((4, 4, 32, 32, 3), dtype=np.float32), np.arange(4) % 5, batch_size=2, epochs=1, verbose=0)
    assert not np.allclose(head.classifier.kernel.numpy(), before)
    for var in model.weights:
        if var.path in frozen:
            np.testing.assert_array_equal(var.numpy(), frozen[var.path], err_msg=var.path)


def _randomise(model: keras.Model, seed: int = 0) -> None:
    """Fresh models have zero re-zero scales (every block an identity); give every weight a value."""
    rng = np.random.default_rng(seed)
    for var in model.weights:
        shape = tuple(var.shape)
        if "moving_variance" in var.path or "gamma" in var.path:
            var.assign(rng.uniform(0.5, 1.5, shape).astype("float32"))
        elif len(shape) == 0:
            var.assign(np.float32(rng.uniform(0.2, 1.0)))
        else:
            fan_in = int(np.prod(shape[:-1])) or 1
            limit = np.sqrt(3.0 / fan_in)
            var.assign(rng.uniform(-limit, limit, shape).astype("float32"))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("model_id", "causal"), [("a1", False), ("a2", True), ("a3", True), ("a4", False), ("a5", True)]
)
def test_larger_models_build_and_run(model_id, causal):
    params = MovinetParams(model_id=model_id, causal=causal)
    model = movinet.build(params, 7, (3, 32, 32, 3))
    _randomise(model)
    x = np.random.default_rng(1).random((1, 3, 32, 32, 3), dtype=np.float32)
    logits = model(x, training=False).numpy()
    assert logits.shape == (1, 7) and np.isfinite(logits).all() and logits.std() > 0
    if causal:
        states = movinet.init_states(model, 1, 1, 32, 32)
        assert any("pos_enc" in k for k in states) == (model_id in ("a3", "a5"))
        for t in range(3):
            frame_logits, states = model.call_with_states(x[:, t : t + 1], states)
        np.testing.assert_allclose(frame_logits.numpy(), logits, rtol=0, atol=ATOL)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("conv_type", "se_type"), [("3d", "2plus3d"), ("3d_2plus1d", "3d"), ("2plus1d", "2d"), ("2plus1d", "none")]
)
def test_other_conv_and_se_types_stream_like_the_whole_clip(conv_type, se_type):
    from vidcli.backends.keras.movinet_import import checkpoint_keys

    params = MovinetParams(causal=True, conv_type=conv_type, se_type=se_type)
    model = movinet.build(params, 4, (4, 32, 32, 3))
    backbone, classifier = checkpoint_keys(model)
    assert len(backbone) + len(classifier) == len(model.weights)
    _randomise(model, seed=2)
    x = np.random.default_rng(3).random((2, 4, 32, 32, 3), dtype=np.float32)
    clip = model(x, training=False).numpy()
    states = movinet.init_states(model, 2, 1, 32, 32)
    assert any(k.endswith("_pool_buffer") and "block" in k for k in states) == (se_type != "2d" and se_type != "none")
    for t in range(4):
        logits, states = model.call_with_states(x[:, t : t + 1], states)
    np.testing.assert_allclose(logits.numpy(), clip, rtol=0, atol=ATOL)
