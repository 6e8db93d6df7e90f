"""A float32 copy of a model trained in mixed precision, for export and streaming.

Mixed precision is a training setting: the variables are float32 either way, but layers compute in float16 or
bfloat16, which ONNX Runtime's CPU kernels do not run (a bfloat16 Conv is an invalid graph) and which would
make the framework/ONNX parity check compare two roundings. Exports and streams therefore run a float32 copy
with the same weights.
"""

from __future__ import annotations

from typing import Any

import keras


def _layers(layer) -> list:
    out = [layer]
    for inner in getattr(layer, "layers", ()):
        out.extend(_layers(inner))
    return out


def _to_float32(config: Any) -> Any:
    if isinstance(config, dict):
        if config.get("class_name") == "DTypePolicy":
            return {**config, "config": {**config.get("config", {}), "name": "float32"}}
        return {k: ("float32" if k == "dtype" and isinstance(v, str) and v.startswith("mixed_")
                    else _to_float32(v)) for k, v in config.items()}
    if isinstance(config, list):
        return [_to_float32(v) for v in config]
    return config


def float32_model(model: keras.Model) -> keras.Model:
    """`model` when every layer computes in float32, else a float32 copy holding the same weights."""
    if all(layer.dtype_policy.name == "float32" for layer in _layers(model)):
        return model
    config = _to_float32(keras.saving.serialize_keras_object(model))
    policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("float32")  # layers whose config does not carry a dtype
    try:
        copy = keras.saving.deserialize_keras_object(config)
    finally:
        keras.mixed_precision.set_global_policy(policy)
    copy.set_weights(model.get_weights())
    return copy
