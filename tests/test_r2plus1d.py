"""(2+1)D ResNet: the tutorial's parameter count, serialisation without custom_objects, variants, errors."""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from vidcli.backends.keras import r2plus1d  # noqa: E402
from vidcli.errors import VidcliError  # noqa: E402

TINY = r2plus1d.Params(filters=[4, 8])


def _conv3d(kernel: tuple[int, int, int], c_in: int, c_out: int) -> int:
    kt, kh, kw = kernel
    return kt * kh * kw * c_in * c_out + c_out


def _conv2plus1d(kernel: tuple[int, int, int], c_in: int, c_out: int) -> int:
    kt, kh, kw = kernel
    return _conv3d((1, kh, kw), c_in, c_out) + _conv3d((kt, 1, 1), c_out, c_out)


def expected_params(filters: list[int], classes: int, channels: int = 3, norm: str = "layer",
                    stem=(3, 7, 7), kernel=(3, 3, 3)) -> int:
    """The tutorial's model layer by layer: stem conv + BatchNorm, then per block two (2+1)D convs each
    followed by a norm, and a Dense + norm projection on the shortcut when the width changes."""
    per_norm = 2 if norm == "layer" else 4
    total = _conv2plus1d(stem, channels, filters[0]) + 4 * filters[0]
    c_in = filters[0]
    for f in filters:
        total += _conv2plus1d(kernel, c_in, f) + per_norm * f
        total += _conv2plus1d(kernel, f, f) + per_norm * f
        if c_in != f:
            total += (c_in * f + f) + per_norm * f
        c_in = f
    return total + c_in * classes + classes


def test_parameter_count_matches_the_tutorial():
    model = r2plus1d.build(r2plus1d.Params(), 10, (10, 224, 224, 3))
    expected = expected_params([16, 32, 64, 128], 10)
    assert expected == 443_322
    assert model.count_params() == expected
    assert model.output_shape == (None, 10)


@pytest.mark.parametrize("norm", ["layer", "batch"])
def test_parameter_count_of_small_variants(norm):
    params = r2plus1d.Params(filters=[4, 8, 8], norm=norm)
    model = r2plus1d.build(params, 5, (4, 32, 32, 3))
    assert model.count_params() == expected_params([4, 8, 8], 5, norm=norm)


def test_forward_shapes_and_downsampling():
    model = r2plus1d.build(TINY, 3, (4, 32, 32, 3))
    assert model.get_layer("resize_0").output.shape[1:] == (4, 16, 16, 4)
    assert model.get_layer("resize_1").output.shape[1:] == (4, 8, 8, 4)
    y = model(np.zeros((2, 4, 32, 32, 3), np.float32))
    assert tuple(y.shape) == (2, 3)


def test_non_square_input():
    model = r2plus1d.build(TINY, 3, (4, 32, 48, 3))
    assert tuple(model(np.zeros((1, 4, 32, 48, 3), np.float32)).shape) == (1, 3)


def test_batch_norm_variant_builds_and_runs_in_training_mode():
    model = r2plus1d.build(r2plus1d.Params(filters=[4, 8], norm="batch", dropout=0.2), 3, (4, 32, 32, 3))
    names = [layer.__class__.__name__ for layer in model.layers]
    assert "LayerNormalization" not in names and "Dropout" in names
    bn = model.get_layer("block1_ln1")
    assert bn.__class__.__name__ == "BatchNormalization"
    before = np.asarray(bn.moving_mean).copy()
    x = np.random.default_rng(0).random((4, 4, 32, 32, 3), np.float32)
    y = np.asarray(model(x, training=True))
    assert y.shape == (4, 3) and np.isfinite(y).all()
    assert not np.allclose(before, np.asarray(bn.moving_mean))


def test_keras_file_round_trip_without_custom_objects(tmp_path):
    model = r2plus1d.build(TINY, 3, (4, 32, 32, 3))
    x = np.random.default_rng(1).random((2, 4, 32, 32, 3), np.float32)
    before = np.asarray(model(x, training=False))
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    after = np.asarray(loaded(x, training=False))
    np.testing.assert_array_equal(before, after)
    assert loaded.count_params() == model.count_params()
    conv = loaded.get_layer("block1_conv1")
    assert conv.get_config()["kernel_size"] == (3, 3, 3) or list(conv.get_config()["kernel_size"]) == [3, 3, 3]


def test_size_not_divisible_names_data_size():
    with pytest.raises(VidcliError) as info:
        r2plus1d.build(TINY, 3, (4, 30, 32, 3))
    assert "data.size" in str(info.value) and "30x32" in str(info.value)
    with pytest.raises(VidcliError, match="data.size"):
        r2plus1d.build(r2plus1d.Params(), 3, (4, 40, 40, 3))  # 4 stages need a multiple of 16


def test_bad_params():
    with pytest.raises(VidcliError, match="model.params.norm"):
        r2plus1d.build(r2plus1d.Params(filters=[4], norm="group"), 3, (4, 32, 32, 3))
    with pytest.raises(VidcliError, match="model.params.filters"):
        r2plus1d.build(r2plus1d.Params(filters=[]), 3, (4, 32, 32, 3))
