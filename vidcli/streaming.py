"""Stream prediction: a stream model sees one frame per call and carries its states between calls.

A stream ONNX file takes its frame input (the card's `stream_input`) plus one input per state (zeros to
start) and returns `logits` plus the next value of every state; the card's `stream_states` lists each state's
input, output, shape and dtype, so ONNX Runtime alone runs it. `stream_logits` says whether `logits` already
covers every frame so far (MoViNet: running) or only the newest frame (online TSM: per_frame; the running mean
is taken here, which is what the whole-clip model computes). Imports neither TensorFlow nor PyTorch.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np

from vidcli.errors import VidcliError
from vidcli.modelcard import OUTPUT, ModelCard, softmax, top_k


def not_stream(where: str) -> VidcliError:
    return VidcliError(f"{where}: not a stream model (--stream needs a MoViNet with model.params.causal: true or an "
                       "online TSM, model.params.online: true)")


class OnnxStream:
    """A stream ONNX file run by ONNX Runtime, one frame per call."""

    def __init__(self, path: Path, threads: int = 1):
        from vidcli.inference import open_session

        # One frame is too little work to share between threads: one thread is faster (see bench_movinet.py).
        self.session, self.card = open_session(path, threads)
        if self.card.stream is None:
            raise not_stream(str(path))
        self.spec = self.card.stream
        inputs = {i.name: i for i in self.session.get_inputs()}
        missing = [n for n in [self.spec.input, *(s.name for s in self.spec.states)] if n not in inputs]
        if missing:
            raise VidcliError(f"{path}: stream model lacks the inputs {', '.join(missing)}")
        self.frame_shape = tuple(self.card.preprocess_frame(np.zeros((*self.card.size, self.card.channels),
                                                                      np.uint8)).shape)
        self._outputs = [OUTPUT, *(s.output for s in self.spec.states)]

    def initial_states(self) -> dict[str, np.ndarray]:
        return {s.name: np.zeros(s.shape, dtype=s.dtype) for s in self.spec.states}

    def step(self, frame: np.ndarray, states: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Logits (1, classes) after `frame` and the states to pass with the next frame."""
        if not isinstance(frame, np.ndarray) or frame.shape != self.frame_shape or frame.dtype != np.float32:
            got = f"{getattr(frame, 'dtype', type(frame).__name__)} {tuple(getattr(frame, 'shape', ()))}"
            raise VidcliError(f"the stream model takes one frame as float32 {self.frame_shape}, got {got}")
        try:
            values = self.session.run(self._outputs, {self.spec.input: frame, **states})
        except Exception as exc:  # onnxruntime's own untyped errors (a state that does not fit its graph, ...)
            why = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
            raise VidcliError(f"{self.card.extra.get('run', 'the stream model')}: ONNX Runtime could not run a "
                              f"step ({why})") from None
        return values[0], {s.name: v for s, v in zip(self.spec.states, values[1:], strict=True)}


class Running:
    """A stream model fed frame by frame from fresh states: after each uint8 frame (H, W, C) of the card's size,
    the logits of every frame so far (float64; a per-frame model's running mean, as its whole-clip model)."""

    def __init__(self, model):
        self.model, self.card = model, model.card
        self.states, self.total, self.n = model.initial_states(), None, 0

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        logits, self.states = self.model.step(self.card.preprocess_frame(frame), self.states)
        logits = np.asarray(logits, dtype=np.float64)[0]
        if self.card.stream.logits != "per_frame":
            return logits
        self.n += 1
        self.total = logits if self.total is None else self.total + logits
        return self.total / self.n


def running_logits(model, frames: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
    """`Running` over `frames`."""
    running = Running(model)
    for frame in frames:
        yield running(frame)


def clip_logits(model, clip: np.ndarray) -> np.ndarray:
    """Logits (T, classes) of a stream model fed a uint8 clip (T, H, W, C) frame by frame."""
    return np.stack(list(running_logits(model, clip))).astype(np.float32)


class StreamClips:
    """A stream model used as a clip model: each clip (the card's preprocessed input) is fed frame by frame from
    fresh states; the logits after its last frame are the clip's."""

    def __init__(self, stream):
        self.stream, self.card = stream, stream.card

    def _frames(self, clip: np.ndarray) -> list[np.ndarray]:
        card = self.card
        t, c = card.frames, card.channels
        steps = clip.reshape(t, c, *clip.shape[-2:]) if card.layout == "N(TC)HW" else clip
        shape = (1, c, *card.size) if card.stream.frame_layout == "NCHW" else (1, 1, *card.size, c)
        if card.layout == "NTHWC" and card.stream.frame_layout == "NCHW":
            steps = steps.transpose(0, 3, 1, 2)
        return [np.ascontiguousarray(f.reshape(shape)) for f in steps]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        out = []
        for clip in x:
            states, total = self.stream.initial_states(), None
            for n, frame in enumerate(self._frames(clip)):
                logits, states = self.stream.step(frame, states)
                total = logits if total is None or self.card.stream.logits == "running" else total + logits
                last = total if self.card.stream.logits == "running" else total / (n + 1)
            out.append(np.asarray(last, np.float32)[0])
        return np.stack(out)


def prepare_for(card: ModelCard) -> Callable[[np.ndarray], np.ndarray]:
    """RGB frame -> the card's frame size by its resize rule (letterbox, or cover and centre crop)."""
    if card.resize == "cover_crop":
        from vidcli.datasets.source import crop_views

        return lambda rgb: crop_views(rgb[None], card.size, 1, False)[0, 0]
    from vidcli.video.decode import resize_with_pad

    return lambda rgb: resize_with_pad(rgb, card.size)


def fit_for(card: ModelCard):
    """The decoder's resize rule for the card (what training's reader uses): letterbox, or cover then crop."""
    from vidcli.modelcard import CROP_RATIO
    from vidcli.video.fit import Fit

    return Fit("cover", tuple(card.size), CROP_RATIO) if card.resize == "cover_crop" else Fit("pad", tuple(card.size))


def stream_frames(path: Path, card: ModelCard) -> Iterator[tuple[int, np.ndarray]]:
    """(frame index, uint8 frame resized by the card's rule) for every `frame_step`-th frame, as the model was
    trained."""
    from vidcli.video.decode import iter_frames

    if path.suffix in (".npy", ".npz"):
        raise VidcliError(f"{path}: --stream takes videos, not volumes")
    prepare = prepare_for(card)
    for index, frame in enumerate(iter_frames(path, fit=fit_for(card))):  # sized in the decoder, as training
        if index % card.frame_step == 0:
            yield index, prepare(frame)


def predict_stream(model, source: Path, top: int = 5, name: str = "") -> Iterator[dict]:
    """One result per frame fed: the top-k of every frame seen so far."""
    card = model.card
    indexed = stream_frames(source, card)
    positions: list[int] = []

    def frames() -> Iterator[np.ndarray]:
        for index, frame in indexed:
            positions.append(index)
            yield frame

    for n, logits in enumerate(running_logits(model, frames())):
        yield {"source": str(source), "frame": positions[n], "step": n,
               "top_k": top_k(softmax(logits), card.labels, top), "model": name}


def live(text: str | None) -> None:
    """Overwrite one status line on a terminal's stderr (`None` clears it); silent when not a terminal."""
    if sys.stderr.isatty():
        sys.stderr.write("\r\033[K" + (text or ""))
        sys.stderr.flush()
