"""TensorFlow functions to ONNX bytes through tf2onnx, with the graph outputs given our names."""

from __future__ import annotations

import warnings
from collections.abc import Callable


def _rename_outputs(graph, names: list[str]) -> None:
    """Give the graph's outputs our names; an output that is a graph input (a state returned unchanged) gets
    an Identity node."""
    import onnx

    inputs = {i.name for i in graph.input}
    for output, new in zip(graph.output, names, strict=True):
        old = output.name
        if old == new:
            continue
        if old in inputs:
            graph.node.append(onnx.helper.make_node("Identity", [old], [new], name=f"pass_{new}"))
        else:
            for node in graph.node:
                node.output[:] = [new if o == old else o for o in node.output]
                node.input[:] = [new if i == old else i for i in node.input]
        output.name = new


def convert(fn: Callable, signature: list, opset: int, outputs: list[str]) -> bytes:
    """ONNX bytes of the tf.function `fn` traced at `signature`; its outputs renamed to `outputs`."""
    import tf2onnx

    try:
        from keras.src.export.tf2onnx_lib import patch_tf2onnx

        with warnings.catch_warnings():  # the patch itself pokes at np.object, which NumPy 2 warns about
            warnings.simplefilter("ignore", FutureWarning)
            patch_tf2onnx()  # tf2onnx still uses NumPy 1 names; Keras ships this fix
    except ImportError:
        pass
    proto, _ = tf2onnx.convert.from_function(fn, input_signature=signature, opset=opset)
    _rename_outputs(proto.graph, outputs)
    return proto.SerializeToString()
