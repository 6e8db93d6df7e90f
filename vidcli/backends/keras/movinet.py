"""MoViNet A0-A5, base and stream, as Keras 3 models that load the official TF Model Garden checkpoints.

Building and training::

    params = MovinetParams(model_id="a0", causal=True)          # a stream model
    model = build(params, num_classes=101, input_shape=(8, 172, 172, 3))
    load_pretrained(model, "movinet_a0_stream", params)         # name, URL, .tar.gz or folder
    model.fit(...)                                              # float32 (B, T, H, W, 3) in [0, 1] -> logits

`build` returns a `MovinetClassifier`, a plain functional `keras.Model` that maps a clip to logits, so
the generic Keras trainer, `model.save("x.keras")` and `keras.saving.load_model` need nothing special.
It never downloads: pass `params.pretrained` to `load_pretrained` for that.

Streaming (stream models only): the states are a dict of tensors named as in the reference
(`state_block1_layer0_stream_buffer`, `state_head_pool_frame_count`, ...). Start from zeros, feed a clip
one frame (or any number of frames) at a time, and carry the states returned::

    states = init_states(model, batch=1, frames=1, height=172, width=172)
    step = stream_fn(model)                  # (inputs, states) -> (logits, new_states), a tf.function
    for frame in clip:                       # frame: (1, 1, H, W, 3)
        logits, states = step(frame, states)

The logits after frame t equal those of the whole clip up to t in one call: convolutions are causal,
squeeze-excite pools are running means and the head averages every frame seen so far.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import keras

from vidcli.backends.keras.movinet_layers import (
    ClassifierHead,
    ConvBN,
    Head,
    MovinetBlock,
)
from vidcli.errors import VidcliError
from vidcli.families.movinet import (  # noqa: F401  (the model's own table and params)
    ARCHS,
    CONV_TYPES,
    HEAD_FILTERS,
    K13,
    MODEL_IDS,
    S12,
    SE_TYPES,
    MovinetParams,
)

Params = MovinetParams


def _check_input_shape(input_shape: Any) -> tuple[int | None, int | None, int | None, int]:
    shape = tuple(input_shape)
    ok = len(shape) == 4 and shape[3] == 3
    ok = ok and all(d is None or (isinstance(d, int) and d > 0) for d in shape[:3])
    if not ok:
        raise VidcliError(f"movinet input_shape: expected (frames, height, width, 3), got {input_shape!r}")
    return shape  # type: ignore[return-value]


@keras.saving.register_keras_serializable(package="vidcli")
class MovinetClassifier(keras.Model):
    """Backbone (stem, blocks, head) plus classifier head, as one functional model: clip -> logits.

    Layers are named as in the reference (`stem`, `block{b}_layer{l}`, `head`, `classifier_head`), which
    is also the order `call_with_states` runs them in.
    """

    def __init__(
        self,
        model_id: str = "a0",
        causal: bool = False,
        conv_type: str = "3d",
        se_type: str = "3d",
        activation: str = "swish",
        gating_activation: str = "sigmoid",
        use_positional_encoding: bool = False,
        dropout: float = 0.5,
        freeze_backbone: bool = False,
        trainable_blocks: int | None = None,
        num_classes: int = 600,
        clip_shape: tuple = (None, None, None, 3),
        **kwargs,
    ):
        stem_filters, blocks, project_filters = ARCHS[model_id]
        inputs = keras.Input(shape=tuple(clip_shape), name="image", dtype="float32")
        common = dict(conv_type=conv_type, causal=causal)
        x = ConvBN(stem_filters, K13, S12, activation=activation, state_prefix="state_stem", name="stem", **common)(
            inputs
        )
        for b, (base_filters, layers) in enumerate(blocks):
            for i, (expand, kernel, strides) in enumerate(layers):
                name = f"block{b}_layer{i}"
                x = MovinetBlock(
                    base_filters,
                    expand,
                    kernel,
                    strides,
                    activation=activation,
                    gating_activation=gating_activation,
                    se_type=se_type,
                    use_positional_encoding=use_positional_encoding,
                    state_prefix=f"state_{name}",
                    name=name,
                    **common,
                )(x)
        x = Head(project_filters, activation=activation, conv_type=conv_type, name="head")(x)
        # The classifier head keeps the reference's swish even in stream models.
        logits = ClassifierHead(
            HEAD_FILTERS, num_classes, dropout=dropout, activation="swish", conv_type=conv_type, name="classifier_head"
        )(x)
        kwargs.setdefault("name", f"movinet_{model_id}_{'stream' if causal else 'base'}")
        super().__init__(inputs=inputs, outputs=logits, **kwargs)
        self.model_id = model_id
        self.causal = causal
        self.conv_type = conv_type
        self.se_type = se_type
        self.activation = activation
        self.gating_activation = gating_activation
        self.use_positional_encoding = use_positional_encoding
        self.dropout = dropout
        self.num_classes = num_classes
        self.clip_shape = tuple(clip_shape)
        self.freeze_backbone = freeze_backbone
        self.trainable_blocks = trainable_blocks
        if freeze_backbone:
            # The last N blocks stay trainable together with the head projection that follows them.
            first = len(blocks) - (trainable_blocks or 0)
            for layer in self.backbone_layers():
                block = int(layer.name[5]) if layer.name.startswith("block") else -1
                layer.trainable = bool(trainable_blocks) and (block >= first or isinstance(layer, Head))

    def backbone_layers(self) -> list[keras.layers.Layer]:
        return [layer for layer in self.layers if isinstance(layer, (ConvBN, MovinetBlock, Head))]

    @property
    def classifier_head(self) -> ClassifierHead:
        return self.get_layer("classifier_head")

    @property
    def params(self) -> MovinetParams:
        return MovinetParams(
            model_id=self.model_id,
            causal=self.causal,
            conv_type=self.conv_type,
            se_type=self.se_type,
            activation=self.activation,
            gating_activation=self.gating_activation,
            use_positional_encoding=self.use_positional_encoding,
            dropout=self.dropout,
            freeze_backbone=self.freeze_backbone,
            trainable_blocks=self.trainable_blocks,
        )

    def call_with_states(self, inputs, states: Mapping[str, Any], training: bool = False):
        """Run frames `inputs` (B, t, H, W, 3) from `states`; returns `(logits, new_states)`."""
        if not self.causal:
            raise VidcliError("streaming needs a stream model (model.params.causal: true)")
        states = dict(states)
        x = inputs
        for layer in self.backbone_layers():
            x, states = layer(x, states=states, training=training)
        return self.classifier_head(x, training=training), states

    def get_config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "trainable": self.trainable,
            "model_id": self.model_id,
            "causal": self.causal,
            "conv_type": self.conv_type,
            "se_type": self.se_type,
            "activation": self.activation,
            "gating_activation": self.gating_activation,
            "use_positional_encoding": self.use_positional_encoding,
            "dropout": self.dropout,
            "freeze_backbone": self.freeze_backbone,
            "trainable_blocks": self.trainable_blocks,
            "num_classes": self.num_classes,
            "clip_shape": list(self.clip_shape),
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> MovinetClassifier:
        config = dict(config)
        config["clip_shape"] = tuple(config.get("clip_shape", (None, None, None, 3)))
        return cls(**config)


def build(params: MovinetParams, num_classes: int, input_shape: tuple[int, int, int, int]) -> keras.Model:
    """A MoViNet classifier for clips of `input_shape` = (frames, height, width, 3); None dims are dynamic."""
    p = params.resolved()
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise VidcliError(f"movinet num_classes: expected a positive integer, got {num_classes!r}")
    return MovinetClassifier(
        model_id=p.model_id,
        causal=p.causal,
        conv_type=p.conv_type,
        se_type=p.se_type,
        activation=p.activation,
        gating_activation=p.gating_activation,
        use_positional_encoding=p.use_positional_encoding,
        dropout=float(p.dropout),
        freeze_backbone=p.freeze_backbone,
        trainable_blocks=p.trainable_blocks,
        num_classes=num_classes,
        clip_shape=_check_input_shape(input_shape),
    )


def state_shapes(params: MovinetParams, batch: int, height: int, width: int) -> dict[str, tuple[tuple[int, ...], str]]:
    """Name -> (shape, dtype) of every streaming state, as the reference's `init_states` makes them."""
    p = params.resolved()
    stem_filters, blocks, project_filters = ARCHS[p.model_id]

    def down(size: int, n: int) -> int:
        return -(-size // 2**n)

    shapes: dict[str, tuple[tuple[int, ...], str]] = {}
    n = 1
    split = p.conv_type in ("2plus1d", "3d_2plus1d")
    for b, (_, layers) in enumerate(blocks):
        for i, (expand, kernel, strides) in enumerate(layers):
            prefix = f"state_block{b}_layer{i}"
            strided = strides[1:] != (1, 1)
            if strided and split:
                n += 1
            if kernel[0] > 1:
                shapes[f"{prefix}_stream_buffer"] = (
                    (batch, kernel[0] - 1, down(height, n), down(width, n), expand),
                    "float32",
                )
            if p.se_type in ("3d", "2plus3d"):
                shapes[f"{prefix}_pool_buffer"] = ((batch, 1, 1, 1, expand), "float32")
                shapes[f"{prefix}_pool_frame_count"] = ((1,), "int32")
            if p.use_positional_encoding and p.se_type != "none":
                shapes[f"{prefix}_pos_enc_frame_count"] = ((1,), "int32")
            if strided and not split:
                n += 1
    shapes["state_head_pool_buffer"] = ((batch, 1, 1, 1, project_filters), "float32")
    shapes["state_head_pool_frame_count"] = ((1,), "int32")
    return shapes


def init_states(
    model_or_params: keras.Model | MovinetParams, batch: int, frames: int, height: int, width: int
) -> dict[str, Any]:
    """Zero states for streaming clips of `height` x `width` (`frames`, the chunk length, does not matter)."""
    import tensorflow as tf

    params = model_or_params.params if isinstance(model_or_params, MovinetClassifier) else model_or_params
    if not isinstance(params, MovinetParams):
        raise TypeError("init_states needs a MovinetClassifier or MovinetParams")
    if not params.causal:
        raise VidcliError("streaming needs a stream model (model.params.causal: true)")
    for name, value in (("batch", batch), ("frames", frames), ("height", height), ("width", width)):
        if not isinstance(value, int) or value < 1:
            raise VidcliError(f"movinet init_states: {name} must be a positive integer, got {value!r}")
    return {
        name: tf.zeros(shape, dtype=dtype)
        for name, (shape, dtype) in state_shapes(params, batch, height, width).items()
    }


def stream_fn(model: MovinetClassifier, compiled: bool = True) -> Callable[[Any, dict[str, Any]], tuple[Any, dict]]:
    """`(inputs, states) -> (logits, new_states)` for `model`, traced once per input shape when `compiled`."""
    import tensorflow as tf

    if not isinstance(model, MovinetClassifier):
        raise TypeError("stream_fn needs a model made by movinet.build")
    if not model.causal:
        raise VidcliError("streaming needs a stream model (model.params.causal: true)")

    def step(inputs, states):
        return model.call_with_states(inputs, states, training=False)

    return tf.function(step, reduce_retracing=True) if compiled else step

