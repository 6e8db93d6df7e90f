"""MoViNet stream models, one frame per call: the ONNX step export and the Keras stream runner.

The stream ONNX file takes `image` (1, 1, H, W, 3) plus one input per state (zeros at the first frame) and
returns `logits` (of every frame so far: causal convolutions, running-mean pools and head) plus the next value
of every state; the model card's `stream_states` lists each state's input, output, shape and dtype.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from vidcli.backends.base import Stream
from vidcli.backends.keras import movinet
from vidcli.backends.keras.float32 import float32_model
from vidcli.backends.keras.onnx import convert
from vidcli.errors import VidcliError
from vidcli.modelcard import OUTPUT, ModelCard, StateSpec, StreamSpec

FRAME_INPUT = "image"


def stream_model(model, where: str) -> movinet.MovinetClassifier:
    """The float32 `MovinetClassifier` behind a loaded checkpoint, refusing anything that cannot stream. A model
    trained in mixed precision (the classifier inside a float32-logits wrapper) streams as a float32 copy."""
    model = float32_model(model)
    inner = model if isinstance(model, movinet.MovinetClassifier) else next(
        (layer for layer in getattr(model, "layers", ()) if isinstance(layer, movinet.MovinetClassifier)), None)
    if inner is None:
        raise VidcliError(f"{where}: not a MoViNet, so it cannot stream")
    if not inner.causal:
        raise VidcliError(f"{where}: not a stream model (a MoViNet streams with model.params.causal: true)")
    return inner


def stream_onnx(model, card: ModelCard, opset: int = 17) -> tuple[bytes, StreamSpec]:
    """ONNX bytes of one stream step of a causal MoViNet for frames of the card's size."""
    model = stream_model(model, card.extra.get("run", "model"))
    height, width = card.size
    shapes = movinet.state_shapes(model.params, 1, height, width)
    names = sorted(shapes)
    specs = [StateSpec(n, f"{n}_next", tuple(shapes[n][0]), shapes[n][1]) for n in names]
    signature = [tf.TensorSpec((1, 1, height, width, 3), tf.float32, name=FRAME_INPUT)]
    signature += [tf.TensorSpec(s.shape, s.dtype, name=s.name) for s in specs]

    @tf.function(input_signature=signature, autograph=False)  # plain Python over layers; nothing to convert
    def step(image, *values):
        logits, new = model.call_with_states(image, dict(zip(names, values, strict=True)), training=False)
        return [tf.cast(logits, tf.float32), *(new[n] for n in names)]

    raw = convert(step, signature, opset, [OUTPUT, *(s.output for s in specs)])
    return raw, StreamSpec(FRAME_INPUT, "NTHWC", specs, "running")


class KerasStream(Stream):
    """A causal MoViNet run by Keras frame by frame (states as TensorFlow tensors)."""

    def __init__(self, model, card: ModelCard):
        self.model = stream_model(model, card.extra.get("run", "model"))
        self.size = card.size
        self._step = movinet.stream_fn(self.model)

    def initial_states(self):
        return movinet.init_states(self.model, 1, 1, *self.size)

    def step(self, frame: np.ndarray, states):
        logits, states = self._step(frame, states)
        return np.asarray(logits, dtype=np.float32), states


stream_runner = KerasStream  # the family contract's name (see `vidcli.backends.registry.stream_module`)
