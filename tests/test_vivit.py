"""ViViT: the Keras example's parameter count, RGB input, serialisation and ONNX parity."""

from __future__ import annotations

import keras
import numpy as np
import onnxruntime as ort
import pytest
from keras import layers

from vidcli.backends.keras.vivit import VivitParams, build, gelu_erf
from vidcli.errors import VidcliError

# Derived by hand for (28, 28, 28, 1), 8^3 patches (27 tokens), width 128, 8 heads, 8 layers, 11 classes:
# conv 8*8*8*1*128+128 = 65,664; positions 27*128 = 3,456; per block 2 LayerNorms 512 + attention
# 4*(128*128+128) = 66,048 + MLP (128*512+512) + (512*128+128) = 131,712 -> 198,272, times 8 = 1,586,176;
# final LayerNorm 256; head 128*11+11 = 1,419. Total 1,656,971.
EXAMPLE_PARAMS = 1_656_971
SMALL = VivitParams(patch_size=(2, 8, 8), projection_dim=32, num_heads=4, num_layers=2)


def example_model(input_shape=(28, 28, 28, 1), patch=(8, 8, 8), dim=128, heads=8, depth=8, classes=11):
    """The keras-io example's architecture rebuilt from stock layers (positions fed in as a second input)."""
    video = keras.Input(input_shape)
    x = layers.Conv3D(dim, patch, strides=patch, padding="valid")(video)
    x = layers.Reshape((-1, dim))(x)
    positions = keras.Input((x.shape[1],), dtype="int32")
    x = layers.Add()([x, layers.Embedding(x.shape[1], dim)(positions)])
    for _ in range(depth):
        y = layers.LayerNormalization(epsilon=1e-6)(x)
        y = layers.MultiHeadAttention(heads, key_dim=dim // heads, dropout=0.1)(y, y)
        x = layers.Add()([y, x])
        y = layers.LayerNormalization(epsilon=1e-6)(x)
        y = layers.Dense(dim * 4, activation="gelu")(y)
        y = layers.Dense(dim, activation="gelu")(y)
        x = layers.Add()([y, x])
    x = layers.GlobalAvgPool1D()(layers.LayerNormalization(epsilon=1e-6)(x))
    return keras.Model([video, positions], layers.Dense(classes, activation="softmax")(x))


def _shapes(model) -> list[tuple[int, ...]]:
    return sorted(tuple(w.shape) for w in model.weights)


def test_parameter_count_matches_the_keras_example():
    model = build(VivitParams(), 11, (28, 28, 28, 1))
    reference = example_model()
    assert model.count_params() == reference.count_params() == EXAMPLE_PARAMS
    assert _shapes(model) == _shapes(reference)
    assert model.output_shape == (None, 11)


def test_rgb_frames_with_flat_tubelets():
    model = build(SMALL, 5, (8, 32, 32, 3))
    assert model.get_layer("tubelet_embedding").output.shape == (None, 4 * 4 * 4, 32)
    x = np.random.default_rng(0).random((2, 8, 32, 32, 3), dtype=np.float32)
    logits = np.asarray(model(x, training=False))
    assert logits.shape == (2, 5) and np.isfinite(logits).all()
    assert not np.allclose(logits[0], logits[1]), "different clips should give different logits"


def test_gelu_erf_is_the_exact_gelu():
    x = np.linspace(-6, 6, 101, dtype=np.float32)
    exact = keras.activations.gelu(x, approximate=False)
    np.testing.assert_allclose(np.asarray(gelu_erf(x)), np.asarray(exact), atol=1e-6)


def test_keras_file_round_trip_without_custom_objects(tmp_path):
    model = build(SMALL, 3, (8, 32, 32, 1))
    x = np.random.default_rng(1).random((2, 8, 32, 32, 1), dtype=np.float32)
    path = tmp_path / "vivit.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(np.asarray(loaded(x)), np.asarray(model(x)), atol=1e-6)
    assert loaded.count_params() == model.count_params()


def test_every_weight_gets_a_gradient_and_steps_reduce_the_loss():
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    model = build(VivitParams(patch_size=(4, 4, 4), projection_dim=16, num_heads=2, num_layers=1), 2, (8, 8, 8, 1))
    x = np.concatenate([np.zeros((4, 8, 8, 8, 1)), np.ones((4, 8, 8, 8, 1))]).astype(np.float32)
    y = np.array([0] * 4 + [1] * 4)
    optimizer = keras.optimizers.Adam(3e-3)
    losses = []
    for step in range(3):
        with tf.GradientTape() as tape:
            loss = keras.ops.mean(keras.losses.sparse_categorical_crossentropy(y, model(x), from_logits=True))
        grads = tape.gradient(loss, model.trainable_variables)
        if step == 0:
            silent = [v.path for v, g in zip(model.trainable_variables, grads, strict=True) if not np.any(g)]
            assert silent == [], f"weights without gradient: {silent}"
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        losses.append(float(loss))
    assert losses[-1] < losses[0] * 0.5


@pytest.mark.parametrize(
    ("params", "shape", "field"),
    [
        (VivitParams(patch_size=(16, 8, 8)), (8, 32, 32, 3), "model.params.patch_size"),
        (VivitParams(patch_size=(2, 0, 8)), (8, 32, 32, 3), "model.params.patch_size"),
        (VivitParams(projection_dim=100, num_heads=8), (8, 32, 32, 3), "model.params.projection_dim"),
        (VivitParams(num_layers=0), (8, 32, 32, 3), "model.params.num_layers"),
        (VivitParams(dropout=1.5), (8, 32, 32, 3), "model.params.dropout"),
    ],
)
def test_bad_params_name_the_field(params, shape, field):
    with pytest.raises(VidcliError, match=field.replace(".", r"\.")):
        build(params, 4, shape)


@pytest.mark.slow
def test_onnx_export_matches_keras(tmp_path):
    model = build(SMALL, 5, (8, 32, 32, 3))
    x = np.random.default_rng(2).random((3, 8, 32, 32, 3), dtype=np.float32)
    reference = np.asarray(model(x))  # export needs a model that has been called
    path = tmp_path / "vivit.onnx"
    model.export(str(path), format="onnx", verbose=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {session.get_inputs()[0].name: x})
    np.testing.assert_allclose(out, reference, atol=1e-4)
