"""(2+1)D ResNet (Tran et al. 2017) as the TensorFlow video-classification tutorial builds it.

Each 3D convolution is factorised into a spatial (1 x k x k) and a temporal (k x 1 x 1) one;
residual blocks use layer normalisation, a dense projection on the shortcut when the channel
count changes, and `ResizeVideo` halves the frame size between blocks. With 10 frames at 224x224
and 10 classes the parameter count equals the tutorial model's.
"""

from __future__ import annotations

import keras
from keras import layers, ops

from vidcli.errors import VidcliError
from vidcli.families.r2plus1d import R2Plus1DParams

Params = R2Plus1DParams


@keras.saving.register_keras_serializable(package="vidcli")
class Conv2Plus1D(layers.Layer):
    """A spatial 1xkxk convolution followed by a temporal kx1x1 one."""

    def __init__(self, filters: int, kernel_size, padding: str = "same", **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.kernel_size = tuple(kernel_size)
        self.padding = padding
        kt, kh, kw = self.kernel_size
        self.spatial = layers.Conv3D(filters, (1, kh, kw), padding=padding, name="spatial")
        self.temporal = layers.Conv3D(filters, (kt, 1, 1), padding=padding, name="temporal")

    def build(self, input_shape):
        self.spatial.build(input_shape)
        self.temporal.build(self.spatial.compute_output_shape(input_shape))
        super().build(input_shape)

    def call(self, x):
        return self.temporal(self.spatial(x))

    def compute_output_shape(self, input_shape):
        return self.temporal.compute_output_shape(self.spatial.compute_output_shape(input_shape))

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "kernel_size": self.kernel_size,
                "padding": self.padding}


@keras.saving.register_keras_serializable(package="vidcli")
class ResizeVideo(layers.Layer):
    """Resize every frame of a (B, T, H, W, C) video to (height, width), bilinear."""

    def __init__(self, height: int, width: int, **kwargs):
        super().__init__(**kwargs)
        self.height, self.width = height, width
        self.resize = layers.Resizing(height, width, name="resizing")

    def build(self, input_shape):
        # without it, loading a saved model warns that the sublayer has unbuilt state
        self.resize.build((None, *input_shape[2:]))
        super().build(input_shape)

    def call(self, video):
        shape = ops.shape(video)
        frames = ops.reshape(video, (-1, shape[2], shape[3], shape[4]))
        frames = self.resize(frames)
        return ops.reshape(frames, (-1, shape[1], self.height, self.width, shape[4]))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[1], self.height, self.width, input_shape[4])

    def get_config(self):
        return {**super().get_config(), "height": self.height, "width": self.width}


def _norm(kind: str, name: str) -> layers.Layer:
    # momentum 0.9 (PyTorch's 0.1): with few steps per epoch Keras' 0.99 leaves eval statistics stale
    if kind == "layer":
        return layers.LayerNormalization(name=name)
    return layers.BatchNormalization(momentum=0.9, name=name)


def _residual_block(x, filters: int, kernel, name: str, norm: str = "layer"):
    shortcut = x
    y = Conv2Plus1D(filters, kernel, name=f"{name}_conv1")(x)
    y = _norm(norm, f"{name}_ln1")(y)
    y = layers.ReLU(name=f"{name}_relu")(y)
    y = Conv2Plus1D(filters, kernel, name=f"{name}_conv2")(y)
    y = _norm(norm, f"{name}_ln2")(y)
    if shortcut.shape[-1] != filters:
        shortcut = layers.Dense(filters, name=f"{name}_proj")(shortcut)
        shortcut = _norm(norm, f"{name}_proj_ln")(shortcut)
    return layers.Add(name=f"{name}_add")([shortcut, y])


def build(params: R2Plus1DParams, num_classes: int, input_shape: tuple[int, int, int, int]) -> keras.Model:
    frames, height, width, channels = input_shape
    if params.norm not in ("layer", "batch"):
        raise VidcliError(f"model.params.norm: expected 'layer' or 'batch', got {params.norm!r}")
    if not params.filters:
        raise VidcliError("model.params.filters: needs at least one stage")
    stages = len(params.filters)
    if height % (2**stages) or width % (2**stages):
        raise VidcliError(
            f"data.size: {height}x{width} must be divisible by {2**stages} for {stages} stages of downsampling"
        )
    inputs = keras.Input((frames, height, width, channels), name="video")
    x = Conv2Plus1D(params.filters[0], params.stem_kernel, name="stem_conv")(inputs)
    x = layers.BatchNormalization(momentum=0.9 if params.norm == "batch" else 0.99, name="stem_bn")(x)
    x = layers.ReLU(name="stem_relu")(x)
    x = ResizeVideo(height // 2, width // 2, name="resize_0")(x)
    for i, filters in enumerate(params.filters):
        x = _residual_block(x, filters, params.kernel, name=f"block{i + 1}", norm=params.norm)
        if i < stages - 1:
            x = ResizeVideo(height // 2 ** (i + 2), width // 2 ** (i + 2), name=f"resize_{i + 1}")(x)
    x = layers.GlobalAveragePooling3D(name="pool")(x)
    if params.dropout:
        x = layers.Dropout(params.dropout, name="dropout")(x)
    outputs = layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name="r2plus1d")
