"""Keras 3 layers of MoViNet (Kondratyuk et al. 2021), written to reproduce the TF Model Garden numerics.

Every layer stores its weights in the shapes the Model Garden checkpoints use, so a checkpoint tensor can
be assigned without reshaping; `conv_type` decides those shapes ("3d": Conv3D kernels, "2plus1d": Conv2D
kernels run on frames folded into the batch, "3d_2plus1d": Conv3D kernels split into space and time).

Stateful layers take an optional `states` dict. Without it they return only the output tensor (the
plain Keras graph used for training); with it they return `(output, new_states)`, where missing states
start as zeros. The state names are the reference's (`state_block1_layer0_stream_buffer`, ...).

Convolutions with a temporal kernel are computed as a sum of per-frame 2D convolutions over the
kernel's time taps: no grouped Conv3D, which TensorFlow runs on CPU only through XLA and which
exporters handle badly.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import ops

from vidcli.families.movinet import ACTIVATIONS, GATING_ACTIVATIONS  # noqa: F401

States = dict[str, Any]


def activate(x, name: str | None):
    """The reference's activations; hard_sigmoid keeps its 0.16667 factor (not 1/6) to match checkpoints."""
    if name is None or name == "linear":
        return x
    if name == "swish":
        return ops.silu(x)
    if name == "hard_swish":
        return x * ops.relu6(x + 3.0) * (1.0 / 6.0)
    if name == "sigmoid":
        return ops.sigmoid(x)
    if name == "hard_sigmoid":
        return ops.relu6(x + 3.0) * 0.16667
    if name == "relu":
        return ops.relu(x)
    if name == "relu6":
        return ops.relu6(x)
    raise ValueError(f"unknown activation {name!r}")


def _dim(x, axis: int):
    """The static size of `axis` when known (cheap to trace), else the dynamic one."""
    size = x.shape[axis]
    return size if size is not None else ops.shape(x)[axis]


def _fold(x):
    """(B, T, H, W, C) -> (B*T, H, W, C); the batch and time sizes may be dynamic."""
    return ops.reshape(x, (-1, _dim(x, 2), _dim(x, 3), x.shape[-1]))


def _unfold(y, like):
    """Inverse of `_fold`, taking the number of frames (or else the batch) from `like`."""
    rest = (_dim(y, 1), _dim(y, 2), y.shape[-1])
    if like.shape[1] is not None:
        return ops.reshape(y, (-1, like.shape[1], *rest))
    return ops.reshape(y, (_dim(like, 0), -1, *rest))


def _pad_time(x, before: int, after: int):
    if before == 0 and after == 0:
        return x
    return ops.pad(x, [[0, 0], [before, after], [0, 0], [0, 0], [0, 0]])


def _zeros_like_frames(x, frames: int):
    return ops.zeros((_dim(x, 0), frames, _dim(x, 2), _dim(x, 3), x.shape[-1]), dtype=x.dtype)


@keras.saving.register_keras_serializable(package="vidcli")
class ConvBN(keras.layers.Layer):
    """The reference's ConvBlock/StreamConvBlock: convolution, batch norm, activation, with a stream buffer.

    A causal layer whose kernel spans more than one frame keeps the last `kt - 1` input frames of its
    temporal convolution in `{state_prefix}_stream_buffer`; without states those frames are zeros,
    which is the same as causal zero padding.
    """

    def __init__(
        self,
        filters: int,
        kernel_size: tuple[int, int, int] = (1, 1, 1),
        strides: tuple[int, int, int] = (1, 1, 1),
        depthwise: bool = False,
        causal: bool = False,
        use_bias: bool = False,
        use_batch_norm: bool = True,
        activation: str | None = None,
        conv_type: str = "3d",
        state_prefix: str | None = None,
        kernel_initializer: Any = "he_normal",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.kernel_size = tuple(int(k) for k in kernel_size)
        self.strides = tuple(int(s) for s in strides)
        if self.strides[0] != 1:
            raise ValueError("temporal strides other than 1 are not supported")
        self.depthwise = depthwise
        self.causal = causal
        self.use_bias = use_bias
        self.use_batch_norm = use_batch_norm
        self.activation = activation
        self.conv_type = conv_type
        self.state_prefix = state_prefix
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        kt = self.kernel_size[0]
        self.split_time = conv_type != "3d" and kt > 1
        self.buffered = causal and kt > 1
        self.bn = self.bn_temporal = None
        if use_batch_norm:
            self.bn = keras.layers.BatchNormalization(momentum=0.99, epsilon=1e-3, name="bn")
            if self.split_time:
                self.bn_temporal = keras.layers.BatchNormalization(momentum=0.99, epsilon=1e-3, name="bn_temporal")

    @property
    def buffer_name(self) -> str:
        return f"{self.state_prefix}_stream_buffer"

    def _kernel_shapes(self, in_ch: int) -> tuple[tuple[int, ...], tuple[int, ...] | None]:
        kt, kh, kw = self.kernel_size
        f = self.filters
        cin = 1 if self.depthwise else in_ch
        if self.conv_type == "3d":
            return (kt, kh, kw, cin, f), None
        if self.conv_type == "2plus1d":
            spatial = (kh, kw, f, 1) if self.depthwise else (kh, kw, in_ch, f)
            temporal = ((kt, 1, f, 1) if self.depthwise else (kt, 1, f, f)) if kt > 1 else None
            return spatial, temporal
        temporal = (kt, 1, 1, 1 if self.depthwise else f, f) if kt > 1 else None
        return (1, kh, kw, cin, f), temporal

    def build(self, input_shape):
        in_ch = int(input_shape[-1])
        if self.depthwise and in_ch != self.filters:
            raise ValueError("a depthwise ConvBN needs as many filters as input channels")
        spatial, temporal = self._kernel_shapes(in_ch)
        self.kernel = self.add_weight(name="kernel", shape=spatial, initializer=self.kernel_initializer)
        self.bias = None
        if self.use_bias:
            self.bias = self.add_weight(name="bias", shape=(self.filters,), initializer="zeros")
        self.kernel_temporal = self.bias_temporal = None
        if temporal is not None:
            self.kernel_temporal = self.add_weight(
                name="kernel_temporal", shape=temporal, initializer=self.kernel_initializer
            )
            if self.use_bias:
                self.bias_temporal = self.add_weight(name="bias_temporal", shape=(self.filters,), initializer="zeros")
        out_shape = tuple(input_shape[:-1]) + (self.filters,)
        if self.bn is not None:
            self.bn.build(out_shape)
        if self.bn_temporal is not None:
            self.bn_temporal.build(out_shape)

    def _time_context(self, x, states: States | None):
        """Frames the temporal kernel needs before/around `x`: the stream buffer, zeros, or 'same' padding."""
        kt = self.kernel_size[0]
        if kt == 1:
            return x
        if not self.causal:
            return _pad_time(x, (kt - 1) // 2, kt - 1 - (kt - 1) // 2)
        if states is None:
            return _pad_time(x, kt - 1, 0)
        buffer = states.get(self.buffer_name)
        if buffer is None:
            buffer = _zeros_like_frames(x, kt - 1)
        full = ops.concatenate([ops.cast(buffer, x.dtype), x], axis=1)
        states[self.buffer_name] = full[:, -(kt - 1) :]
        return full

    def _spatial_conv(self, x, kernel4d, strides_hw):
        """A 2D convolution of every frame; `kernel4d` is (kh, kw, in, out) or depthwise (kh, kw, C, 1)."""
        kh, kw = kernel4d.shape[0], kernel4d.shape[1]
        if kh == 1 and kw == 1 and strides_hw == (1, 1) and not self.depthwise:
            return ops.matmul(x, ops.reshape(kernel4d, kernel4d.shape[2:]))
        folded = _fold(x)
        if self.depthwise:
            y = ops.depthwise_conv(folded, kernel4d, strides=strides_hw, padding="same")
        else:
            y = ops.conv(folded, kernel4d, strides=strides_hw, padding="same")
        return _unfold(y, x)

    def _conv3d(self, x, kernel5d, frames_out):
        """Valid-in-time, same-in-space 3D convolution as a sum over the kernel's time taps."""
        kt = kernel5d.shape[0]
        strides_hw = self.strides[1:]
        out = None
        for i in range(kt):
            tap = kernel5d[i]
            if self.depthwise:
                tap = ops.reshape(tap, (tap.shape[0], tap.shape[1], tap.shape[3], 1))
            xi = x if kt == 1 else x[:, i : i + frames_out]
            yi = self._spatial_conv(xi, tap, strides_hw)
            out = yi if out is None else out + yi
        return out

    def _temporal_conv_2d(self, x, frames_out):
        """The (kt, 1) convolution of '2plus1d' on (B, T, H*W, C), as the reference runs it."""
        height, width = _dim(x, 2), _dim(x, 3)
        flat = ops.reshape(x, (-1, _dim(x, 1), height * width, x.shape[-1]))
        if self.depthwise:
            y = ops.depthwise_conv(flat, self.kernel_temporal, strides=1, padding="valid")
        else:
            y = ops.conv(flat, self.kernel_temporal, strides=1, padding="valid")
        return ops.reshape(y, (-1, frames_out, height, width, self.filters))

    def _finish(self, x, bias, bn, training):
        if bias is not None:
            x = x + bias
        if bn is not None:
            x = bn(x, training=training)
        return activate(x, self.activation)

    def call(self, inputs, states: States | None = None, training=None):
        new_states = dict(states) if states is not None else None
        frames = _dim(inputs, 1)
        if not self.split_time:
            x = self._time_context(inputs, new_states)
            x = self._conv3d(x, self.kernel, frames) if self.conv_type == "3d" else self._spatial_2d(x)
            x = self._finish(x, self.bias, self.bn, training)
        else:
            x = self._spatial_2d(inputs)
            x = self._finish(x, self.bias, self.bn, training)
            x = self._time_context(x, new_states)
            temporal = self._temporal_conv_2d if self.conv_type == "2plus1d" else self._conv3d_temporal
            x = temporal(x, frames)
            x = self._finish(x, self.bias_temporal, self.bn_temporal, training)
        return x if new_states is None else (x, new_states)

    def _spatial_2d(self, x):
        kernel = self.kernel
        if self.conv_type != "2plus1d":
            kernel = kernel[0]
            if self.depthwise:
                kernel = ops.reshape(kernel, (kernel.shape[0], kernel.shape[1], kernel.shape[3], 1))
        return self._spatial_conv(x, kernel, self.strides[1:])

    def _conv3d_temporal(self, x, frames_out):
        kt = self.kernel_size[0]
        out = None
        for i in range(kt):
            tap = self.kernel_temporal[i, 0, 0]
            xi = x[:, i : i + frames_out]
            yi = xi * ops.reshape(tap, (-1,)) if self.depthwise else ops.matmul(xi, tap)
            out = yi if out is None else out + yi
        return out

    def get_config(self):
        config = super().get_config()
        config.update(
            filters=self.filters,
            kernel_size=self.kernel_size,
            strides=self.strides,
            depthwise=self.depthwise,
            causal=self.causal,
            use_bias=self.use_bias,
            use_batch_norm=self.use_batch_norm,
            activation=self.activation,
            conv_type=self.conv_type,
            state_prefix=self.state_prefix,
            kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
        )
        return config


def global_pool(x, states: States | None, prefix: str, causal: bool):
    """The reference's GlobalAveragePool3D, state-carrying in both modes.

    Causal: a running mean over frames (B, T, 1, 1, C). Otherwise one mean over all frames seen so far
    (B, 1, 1, 1, C). The running sum lives in `{prefix}_pool_buffer`, the frame count in
    `{prefix}_pool_frame_count`.
    """
    buf_name, count_name = f"{prefix}_pool_buffer", f"{prefix}_pool_frame_count"
    states = states if states is not None else {}
    frames = _dim(x, 1)
    count = ops.cast(states.get(count_name, ops.zeros((1,), dtype="int32")), "int32")
    states[count_name] = count + frames
    buffer = states.get(buf_name)
    if buffer is not None:
        buffer = ops.cast(buffer, x.dtype)
    if causal:
        y = ops.cumsum(ops.mean(x, axis=(2, 3), keepdims=True), axis=1)
        if buffer is not None:
            y = y + buffer
        states[buf_name] = y[:, -1:]
        divisors = ops.cast(ops.arange(frames) + count[0] + 1, x.dtype)
        return y / ops.reshape(divisors, (1, -1, 1, 1, 1))
    y = ops.sum(x, axis=(1, 2, 3), keepdims=True) / ops.cast(_dim(x, 2) * _dim(x, 3), x.dtype)
    if buffer is not None:
        y = y + buffer
    states[buf_name] = y
    return y / ops.cast(count[0] + frames, x.dtype)


def positional_encoding(frames, channels: int, start, dtype="float32"):
    """Sinusoidal encoding (1, T, 1, 1, C): sines of the even-indexed angles, then cosines of the odd ones."""
    power = (2 * (np.arange(channels) // 2)).astype(np.float32) / np.float32(channels)
    angles = (np.float32(1.0) / np.power(np.float32(10000.0), power)).astype(np.float32)
    positions = ops.cast(ops.arange(frames) + start, "float32")[:, None]
    sin = ops.sin(positions * angles[0::2][None, :])
    cos = ops.cos(positions * angles[1::2][None, :])
    encoding = ops.cast(ops.concatenate([sin, cos], axis=-1), dtype)
    return ops.reshape(encoding, (1, -1, 1, 1, channels))


@keras.saving.register_keras_serializable(package="vidcli")
class SqueezeExcite(keras.layers.Layer):
    """The reference's StreamSqueezeExcitation: pooled context -> reduce -> expand -> gate the input.

    se_type "3d" pools over space and time, "2d" over space per frame, "2plus3d" concatenates both.
    In a causal model the time pooling is a running mean, so frame t only sees frames <= t.
    """

    def __init__(
        self,
        hidden_filters: int,
        se_type: str = "3d",
        activation: str = "swish",
        gating_activation: str = "sigmoid",
        causal: bool = False,
        conv_type: str = "3d",
        use_positional_encoding: bool = False,
        state_prefix: str | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.hidden_filters = int(hidden_filters)
        self.se_type = se_type
        self.activation = activation
        self.gating_activation = gating_activation
        self.causal = causal
        self.conv_type = conv_type
        self.use_positional_encoding = use_positional_encoding
        self.state_prefix = state_prefix
        self.se_reduce = ConvBN(
            self.hidden_filters,
            use_bias=True,
            use_batch_norm=False,
            activation=activation,
            conv_type=conv_type,
            causal=causal,
            name="se_reduce",
        )
        self.se_expand = None

    def build(self, input_shape):
        channels = int(input_shape[-1])
        pooled = 2 * channels if self.se_type == "2plus3d" else channels
        self.se_expand = ConvBN(
            channels,
            use_bias=True,
            use_batch_norm=False,
            activation=self.gating_activation,
            conv_type=self.conv_type,
            causal=self.causal,
            name="se_expand",
        )
        self.se_reduce.build((None, None, 1, 1, pooled))
        self.se_expand.build((None, None, 1, 1, self.hidden_filters))
        self.pos_scale = None
        if self.use_positional_encoding:
            self.pos_scale = self.add_weight(name="pos_encoding_scale", shape=(), initializer="zeros")

    def call(self, inputs, states: States | None = None, training=None):
        new_states = dict(states) if states is not None else None
        if self.se_type == "3d":
            x = global_pool(inputs, new_states, self.state_prefix, self.causal)
        elif self.se_type == "2d":
            x = ops.mean(inputs, axis=(2, 3), keepdims=True)
        else:
            x_space = ops.mean(inputs, axis=(2, 3), keepdims=True)
            x = global_pool(x_space, new_states, self.state_prefix, self.causal)
            if not self.causal:
                x = ops.tile(x, (1, _dim(inputs, 1), 1, 1, 1))
            x = ops.concatenate([x, x_space], axis=-1)
        if self.pos_scale is not None:
            name = f"{self.state_prefix}_pos_enc_frame_count"
            count = ops.zeros((1,), dtype="int32")
            if new_states is not None:
                count = ops.cast(new_states.get(name, count), "int32")
                new_states[name] = count + _dim(x, 1)
            encoding = positional_encoding(_dim(x, 1), x.shape[-1], count[0], x.dtype)
            x = x + self.pos_scale * encoding
        x = self.se_reduce(x, training=training)
        x = self.se_expand(x, training=training)
        out = x * inputs
        return out if new_states is None else (out, new_states)

    def get_config(self):
        config = super().get_config()
        config.update(
            hidden_filters=self.hidden_filters,
            se_type=self.se_type,
            activation=self.activation,
            gating_activation=self.gating_activation,
            causal=self.causal,
            conv_type=self.conv_type,
            use_positional_encoding=self.use_positional_encoding,
            state_prefix=self.state_prefix,
        )
        return config


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round to a multiple of `divisor`, never more than 10% below `value` (the reference's rule)."""
    new_value = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if new_value < 0.9 * value:
        new_value += divisor
    return int(new_value)


@keras.saving.register_keras_serializable(package="vidcli")
class MovinetBlock(keras.layers.Layer):
    """Inverted bottleneck: expand, depthwise (causal) conv, squeeze-excite, project, re-zero scaled residual."""

    def __init__(
        self,
        out_filters: int,
        expand_filters: int,
        kernel_size: tuple[int, int, int] = (3, 3, 3),
        strides: tuple[int, int, int] = (1, 1, 1),
        causal: bool = False,
        activation: str = "swish",
        gating_activation: str = "sigmoid",
        se_ratio: float = 0.25,
        conv_type: str = "3d",
        se_type: str = "3d",
        use_positional_encoding: bool = False,
        state_prefix: str | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.out_filters = int(out_filters)
        self.expand_filters = int(expand_filters)
        self.kernel_size = tuple(int(k) for k in kernel_size)
        self.strides = tuple(int(s) for s in strides)
        self.causal = causal
        self.activation = activation
        self.gating_activation = gating_activation
        self.se_ratio = se_ratio
        self.conv_type = conv_type
        self.se_type = se_type
        self.use_positional_encoding = use_positional_encoding
        self.state_prefix = state_prefix
        self.downsample = any(s > 1 for s in self.strides)
        common = dict(conv_type=conv_type)
        self.expansion = ConvBN(expand_filters, activation=activation, name="expansion", **common)
        self.feature = ConvBN(
            expand_filters,
            self.kernel_size,
            self.strides,
            depthwise=True,
            causal=causal,
            activation=activation,
            state_prefix=state_prefix,
            name="feature",
            **common,
        )
        self.projection = ConvBN(out_filters, activation=None, name="projection", **common)
        self.se = None
        if se_type != "none":
            multiplier = 2 if se_type == "2plus3d" else 1
            self.se = SqueezeExcite(
                make_divisible(se_ratio * expand_filters * multiplier, 8),
                se_type=se_type,
                activation=activation,
                gating_activation=gating_activation,
                causal=causal,
                conv_type=conv_type,
                use_positional_encoding=use_positional_encoding,
                state_prefix=state_prefix,
                name="se",
            )
        self.skip = None

    def build(self, input_shape):
        in_ch = int(input_shape[-1])
        if in_ch != self.out_filters or self.downsample:
            self.skip = ConvBN(self.out_filters, conv_type=self.conv_type, name="skip_project")
            self.skip.build(tuple(input_shape[:-1]) + (in_ch,))
        expanded = (None, None, None, None, self.expand_filters)
        self.expansion.build(input_shape)
        self.feature.build(expanded)
        if self.se is not None:
            self.se.build(expanded)
        self.projection.build(expanded)
        self.rezero = self.add_weight(name="rezero_scale", shape=(), initializer="zeros")

    def call(self, inputs, states: States | None = None, training=None):
        x = self.expansion(inputs, training=training)
        if states is None:
            x = self.feature(x, training=training)
            if self.se is not None:
                x = self.se(x, training=training)
        else:
            x, states = self.feature(x, states=states, training=training)
            if self.se is not None:
                x, states = self.se(x, states=states, training=training)
        x = self.projection(x, training=training) * self.rezero
        skip = inputs
        if self.downsample:
            pooled = ops.average_pool(_fold(skip), pool_size=(3, 3), strides=(2, 2), padding="same")
            skip = _unfold(pooled, skip)
        if self.skip is not None:
            skip = self.skip(skip, training=training)
        out = x + skip
        return out if states is None else (out, states)

    def get_config(self):
        config = super().get_config()
        config.update(
            out_filters=self.out_filters,
            expand_filters=self.expand_filters,
            kernel_size=self.kernel_size,
            strides=self.strides,
            causal=self.causal,
            activation=self.activation,
            gating_activation=self.gating_activation,
            se_ratio=self.se_ratio,
            conv_type=self.conv_type,
            se_type=self.se_type,
            use_positional_encoding=self.use_positional_encoding,
            state_prefix=self.state_prefix,
        )
        return config


@keras.saving.register_keras_serializable(package="vidcli")
class Head(keras.layers.Layer):
    """Pointwise projection, then the mean over all frames seen so far (state `state_head_pool_*`)."""

    def __init__(self, project_filters: int, activation: str = "swish", conv_type: str = "3d", **kwargs):
        super().__init__(**kwargs)
        self.project_filters = int(project_filters)
        self.activation = activation
        self.conv_type = conv_type
        self.project = ConvBN(project_filters, activation=activation, conv_type=conv_type, name="project")

    def build(self, input_shape):
        self.project.build(input_shape)

    def call(self, inputs, states: States | None = None, training=None):
        new_states = dict(states) if states is not None else None
        x = self.project(inputs, training=training)
        x = global_pool(x, new_states, "state_head", causal=False)
        return x if new_states is None else (x, new_states)

    def get_config(self):
        config = super().get_config()
        config.update(project_filters=self.project_filters, activation=self.activation, conv_type=self.conv_type)
        return config


@keras.saving.register_keras_serializable(package="vidcli")
class ClassifierHead(keras.layers.Layer):
    """Pointwise 'dense' to head_filters, dropout, pointwise classifier; (B, 1, 1, 1, C) -> logits (B, K)."""

    def __init__(
        self,
        head_filters: int,
        num_classes: int,
        dropout: float = 0.5,
        activation: str = "swish",
        conv_type: str = "3d",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.head_filters = int(head_filters)
        self.num_classes = int(num_classes)
        self.dropout = float(dropout)
        self.activation = activation
        self.conv_type = conv_type
        self.head = ConvBN(
            head_filters, use_bias=True, use_batch_norm=False, activation=activation, conv_type=conv_type, name="head"
        )
        self.classifier = ConvBN(
            num_classes,
            use_bias=True,
            use_batch_norm=False,
            conv_type=conv_type,
            name="classifier",
            kernel_initializer=keras.initializers.RandomNormal(stddev=0.01),
        )
        self.drop = keras.layers.Dropout(self.dropout)

    def build(self, input_shape):
        self.head.build(input_shape)
        self.classifier.build(tuple(input_shape[:-1]) + (self.head_filters,))

    def call(self, inputs, training=None):
        x = self.head(inputs, training=training)
        if self.dropout > 0:
            x = self.drop(x, training=training)
        x = self.classifier(x, training=training)
        return ops.cast(ops.reshape(x, (-1, self.num_classes)), "float32")

    def get_config(self):
        config = super().get_config()
        config.update(
            head_filters=self.head_filters,
            num_classes=self.num_classes,
            dropout=self.dropout,
            activation=self.activation,
            conv_type=self.conv_type,
        )
        return config
