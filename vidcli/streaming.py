"""Stream prediction: a MoViNet stream model sees one frame per call and carries its states between calls.

A stream ONNX file takes `image` (1, 1, H, W, 3) plus one input per state (zeros to start) and returns
`logits` plus the next value of every state; the `stream_states` metadata entry lists each state's
input, output, shape and dtype, so ONNX Runtime alone can run it. Everything here that touches the
ONNX path imports neither TensorFlow nor PyTorch; the Keras path and the export import them lazily.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vidcli import fsio
from vidcli.console import log
from vidcli.errors import VidcliError, fail

STATES_KEY = "stream_states"
FRAME_INPUT = "image"
LOGITS = "logits"


@dataclass(frozen=True)
class StateSpec:
    name: str
    output: str
    shape: tuple[int, ...]
    dtype: str


def is_stream_recipe(rec) -> bool:
    return rec.model.arch == "movinet" and rec.model.params.get("causal") is True


def _not_stream(where: str) -> VidcliError:
    return VidcliError(f"{where}: not a stream model (--stream needs a MoViNet trained with model.params.causal: true)")


def _check_frame(frame: np.ndarray, shape: tuple[int, ...], where: str) -> None:
    if not isinstance(frame, np.ndarray) or frame.shape != shape or frame.dtype != np.float32:
        got = f"{getattr(frame, 'dtype', type(frame).__name__)} {tuple(getattr(frame, 'shape', ()))}"
        raise VidcliError(f"{where}: the stream model takes one frame as float32 {shape}, got {got}")


class OnnxStream:
    """A stream ONNX file run by ONNX Runtime."""

    def __init__(self, path: Path):
        from vidcli.inference import OnnxModel

        # One frame is too little work to share between threads: one thread is faster (see bench_movinet.py).
        model = OnnxModel(path, threads=1)
        self.session, self.info = model.session, model.info
        meta = self.session.get_modelmeta().custom_metadata_map
        if STATES_KEY not in meta:
            raise _not_stream(str(path))
        try:
            self.specs = [StateSpec(s["name"], s["output"], tuple(s["shape"]), s["dtype"])
                          for s in json.loads(meta[STATES_KEY])]
        except (ValueError, KeyError, TypeError) as exc:
            raise VidcliError(f"{path}: malformed '{STATES_KEY}' metadata ({exc})") from exc
        inputs = {i.name for i in self.session.get_inputs()}
        missing = [n for n in [FRAME_INPUT, *(s.name for s in self.specs)] if n not in inputs]
        if missing:
            raise VidcliError(f"{path}: stream model lacks the inputs {', '.join(missing)}")
        self.frame_shape = (1, 1, *self.info.size, self.info.channels)
        self._outputs = [LOGITS, *(s.output for s in self.specs)]

    def initial_states(self) -> dict[str, np.ndarray]:
        return {s.name: np.zeros(s.shape, dtype=s.dtype) for s in self.specs}

    def step(self, frame: np.ndarray, states: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Logits (1, classes) after `frame` and the states to pass with the next frame."""
        _check_frame(frame, self.frame_shape, self.info.source)
        values = self.session.run(self._outputs, {FRAME_INPUT: frame, **states})
        return values[0], {s.name: v for s, v in zip(self.specs, values[1:], strict=True)}

    def __call__(self, clips: np.ndarray) -> np.ndarray:
        """Whole clips (N, T, H, W, C) -> logits (N, classes), each clip streamed from fresh states."""
        out = []
        for clip in clips:
            states = self.initial_states()
            for t in range(clip.shape[0]):
                logits, states = self.step(np.ascontiguousarray(clip[None, t : t + 1]), states)
            out.append(logits[0])
        return np.stack(out)


class KerasStream:
    """A trained stream run without an ONNX file: Keras runs it frame by frame (slower to start)."""

    def __init__(self, run):
        from vidcli.backends import registry
        from vidcli.backends.keras import movinet
        from vidcli.exporting import metadata
        from vidcli.inference import _meta_info

        rec = run.recipe
        if not is_stream_recipe(rec):
            raise _not_stream(str(run.path))
        self.model = stream_model(registry.backend(rec.model.arch).load_for_run(run), str(run.path))
        self.info = _meta_info(metadata(run, (rec.data.frames, *rec.data.size, 3)), str(run.path))
        self.frame_shape = (1, 1, *self.info.size, 3)
        self._init = lambda: movinet.init_states(self.model, 1, 1, *self.info.size)
        self._step = movinet.stream_fn(self.model)

    def initial_states(self) -> dict[str, Any]:
        return self._init()

    def step(self, frame: np.ndarray, states: dict[str, Any]) -> tuple[np.ndarray, dict[str, Any]]:
        _check_frame(frame, self.frame_shape, self.info.source)
        logits, states = self._step(frame, states)
        return np.asarray(logits, dtype=np.float32), states


def stream_model(model, where: str):
    """The `MovinetClassifier` behind a loaded checkpoint, refusing anything that cannot stream."""
    from vidcli.backends.keras.movinet import MovinetClassifier

    if not isinstance(model, MovinetClassifier):
        raise VidcliError(f"{where}: streaming needs a float32 MoViNet (train.precision: float32)")
    if not model.causal:
        raise _not_stream(where)
    return model


def open_stream_model(model: Path | None, runs_dir: Path = Path("runs")) -> OnnxStream | KerasStream:
    """--model for --stream: a stream .onnx file, or a run folder (its model.onnx, else its checkpoint)."""
    from vidcli.runs import Run, newest

    if model is not None and (model.suffix == ".onnx" or (model.is_file() and model.suffix != ".keras")):
        return OnnxStream(model)
    run = newest(runs_dir) if model is None else Run.open(model.parent if model.suffix == ".keras" else model)
    run.labels  # noqa: B018  (a run without labels is an error before anything loads)
    onnx_file = run.file("model.onnx")
    return OnnxStream(onnx_file) if onnx_file.is_file() else KerasStream(run)


def stream_frames(path: Path, size: tuple[int, int], frame_step: int) -> Iterator[tuple[int, np.ndarray]]:
    """(frame index, uint8 frame resized with padding) for every `frame_step`-th frame, as the model was trained."""
    from vidcli.video.decode import iter_frames

    if path.suffix == ".npy":
        raise VidcliError(f"{path}: --stream takes videos, not volumes")
    for index, frame in enumerate(iter_frames(path, size)):  # sized by the rule clips are trained with
        if index % frame_step == 0:
            yield index, frame


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max())
    return z / z.sum()


def predict_stream(model: OnnxStream | KerasStream, source: Path, top_k: int = 5) -> Iterator[dict]:
    """One result per frame fed: the top-k after every frame seen so far (the model's running average)."""
    from vidcli.exporting import to_model_input

    info = model.info
    k = max(1, min(top_k, len(info.labels)))
    states = model.initial_states()
    for n, (index, frame) in enumerate(stream_frames(source, info.size, info.frame_step)):
        logits, states = model.step(to_model_input(frame[None, None], info.pre), states)
        probs = _softmax(np.asarray(logits, dtype=np.float64)[0])
        order = np.argsort(-probs)[:k]
        yield {
            "source": str(source),
            "frame": index,
            "step": n,
            "top_k": [{"label": info.labels[i], "probability": round(float(probs[i]), 6)} for i in order],
            "model": info.source,
        }


def live(text: str | None) -> None:
    """Overwrite one status line on a terminal's stderr (`None` clears it); silent when not a terminal."""
    if sys.stderr.isatty():
        sys.stderr.write("\r\033[K" + (text or ""))
        sys.stderr.flush()


# -- export (TensorFlow) -----------------------------------------------------------------------------


def _rename_outputs(graph, names: list[str]) -> None:
    """Give the graph's outputs our names; a state returned unchanged gets an Identity node."""
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


def stream_onnx(model, height: int, width: int, opset: int = 17) -> tuple[bytes, list[StateSpec]]:
    """ONNX bytes of one stream step of `model` (a causal MovinetClassifier) for frames of height x width."""
    import tensorflow as tf
    import tf2onnx

    from vidcli.backends.keras import movinet

    shapes = movinet.state_shapes(model.params, 1, height, width)
    names = sorted(shapes)
    specs = [StateSpec(n, f"{n}_next", tuple(shapes[n][0]), shapes[n][1]) for n in names]
    signature = [tf.TensorSpec((1, 1, height, width, 3), tf.float32, name=FRAME_INPUT)]
    signature += [tf.TensorSpec(s.shape, s.dtype, name=s.name) for s in specs]

    @tf.function(input_signature=signature, autograph=False)  # plain Python over layers; nothing to convert
    def step(image, *values):
        logits, new = model.call_with_states(image, dict(zip(names, values, strict=True)), training=False)
        return [tf.cast(logits, tf.float32), *(new[n] for n in names)]

    try:
        from keras.src.export.tf2onnx_lib import patch_tf2onnx

        patch_tf2onnx()  # tf2onnx still uses NumPy 1 names; Keras ships this fix
    except ImportError:
        pass
    proto, _ = tf2onnx.convert.from_function(step, input_signature=signature, opset=opset)
    _rename_outputs(proto.graph, [LOGITS, *(s.output for s in specs)])
    return proto.SerializeToString(), specs


def keras_frames(model, clip: np.ndarray) -> np.ndarray:
    """Logits (T, B, classes) of `model` fed `clip` (B, T, H, W, 3) one frame at a time."""
    from vidcli.backends.keras import movinet

    b, t, h, w, _ = clip.shape
    step = movinet.stream_fn(model)
    states = movinet.init_states(model, b, 1, h, w)
    out = []
    for i in range(t):
        logits, states = step(clip[:, i : i + 1], states)
        out.append(np.asarray(logits, dtype=np.float32))
    return np.stack(out)


def onnx_frames(session, specs: list[StateSpec], clip: np.ndarray) -> np.ndarray:
    """Logits (T, 1, classes) of a stream ONNX session fed `clip` (1, T, H, W, 3) one frame at a time."""
    states = {s.name: np.zeros(s.shape, dtype=s.dtype) for s in specs}
    wanted = [LOGITS, *(s.output for s in specs)]
    out = []
    for i in range(clip.shape[1]):
        values = session.run(wanted, {FRAME_INPUT: np.ascontiguousarray(clip[:, i : i + 1]), **states})
        out.append(values[0])
        states = {s.name: v for s, v in zip(specs, values[1:], strict=True)}
    return np.stack(out)


def export_stream(run, out: Path | None = None, opset: int | None = None) -> dict:
    """Export a stream run: one frame per call, states in and out; parity checked frame by frame."""
    import onnxruntime as ort

    from vidcli import exporting
    from vidcli.backends import registry

    rec = run.recipe
    out = out or run.file("model.onnx")
    opset = opset or rec.export.opset
    model = stream_model(registry.backend(rec.model.arch).load_for_run(run), str(run.path))
    clips, what = exporting._sample(run, batch=1)
    x = exporting.to_model_input(clips, exporting.preprocessing(rec))
    _, frames, height, width, _ = x.shape
    raw, specs = stream_onnx(model, height, width, opset)
    meta = exporting.metadata(run, tuple(clips.shape[1:]))
    meta.update({STATES_KEY: json.dumps([asdict(s) for s in specs]), "stream": "true",
                 "stream_input": FRAME_INPUT, "stream_output": LOGITS})
    data = exporting.with_metadata(raw, meta)
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    reference = keras_frames(model, x)
    got = onnx_frames(session, specs, x)
    diff = float(np.abs(got - reference).max())
    tol = rec.export.tolerance
    log(f"stream parity on {frames} frames of 1 of the {what}: max |keras - onnxruntime| = {diff:.3g} "
        f"(tolerance {tol:g})")
    if not diff <= tol:
        raise fail(f"stream ONNX export differs from Keras by {diff:.3g} > {tol:g}; {out} not written")
    fsio.write_bytes(out, data)
    return {"path": str(out), "max_abs_diff": diff, "tolerance": tol, "opset": opset, "metadata": meta,
            "bytes": len(data), "stream": True, "states": len(specs)}
