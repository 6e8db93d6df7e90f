"""Classifying what is not a file on disk: live streams and cameras continuously, video URLs as files.

A clip model sees a sliding window of the newest `window` stream frames (default its own clip: `frames` frames
`frame_step` apart), from which the card's sampling picks its frames, every `stride` frames. A stream model
(MoViNet stream, online TSM) is fed every `frame_step`-th frame with its states carried, and reports every
`stride` frames; per-frame logits (online TSM) are averaged since the start, as `predict --stream` does. When the
model is slower than the stream the newest frames win: a window model predicts on the newest window (older frames
are dropped), a stream model skips the frames the buffer could not hold. Frames and timestamps count from the
stream's first frame; after a reconnect the window starts empty. Imports neither TensorFlow nor PyTorch.
"""

from __future__ import annotations

import re
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vidcli.errors import VidcliError
from vidcli.modelcard import ModelCard, softmax, top_k
from vidcli.streaming import Running, prepare_for

STREAM_BUFFER = 4  # frames a stream model may lag behind before the oldest are dropped


@dataclass
class Prediction:
    source: str
    frame: int  # index of the newest frame the prediction saw
    time: float  # its time in seconds from the stream's first frame
    top_k: list[dict[str, Any]]
    model: str
    arrived: float  # time.monotonic() when that frame was decoded (for latency; not printed)

    def record(self) -> dict[str, Any]:
        return {"source": self.source, "frame": self.frame, "time": round(self.time, 3), "top_k": self.top_k,
                "model": self.model}


def default_window(card: ModelCard) -> int:
    """The model's own clip for `center` sampling; 64 frames (I3D's dense window) for segment models."""
    if card.sampling == "center":
        from vidcli.video.decode import clip_span

        return clip_span(card.frames, card.frame_step)
    from vidcli.datasets.frames import DENSE_WINDOW

    return max(DENSE_WINDOW, card.frames)


def window_positions(card: ModelCard, window: int) -> np.ndarray:
    """Which of a window's frames the model sees: evenly spread (exactly `frame_step` apart in the default
    window), or the card's segment sampling."""
    if card.sampling == "center":
        return np.round(np.linspace(0, window - 1, card.frames)).astype(int)
    from vidcli.datasets.source import segment_positions

    return segment_positions(window, card.frames, card.sampling)[0]


class LiveClassifier:
    """`model`: a clip model (callable with a card) or, with `stream`, a stream model (`vidcli.models`)."""

    def __init__(self, model, *, stream: bool = False, window: int | None = None, stride: int | None = None,
                 top: int = 5, name: str = "", source: str = ""):
        card = model.card
        if card.input_kind == "volumes" or card.channels != 3:
            raise VidcliError("live sources need a video model (RGB frames); this one takes volumes")
        self.model, self.card, self.stream, self.top, self.name, self.source = model, card, stream, top, name, source
        if stream and window is not None:
            raise VidcliError("--window is for clip models; a stream model (--stream) sees every frame")
        self.window = window or default_window(card)
        if not stream and self.window < card.frames:
            raise VidcliError(f"--window {self.window}: the model takes {card.frames} frames; give at least that")
        self.stride = stride or (card.frame_step if stream else max(1, self.window // 2))
        self.positions = None if stream else window_positions(card, self.window)
        self.predictions_made = 0

    def reader(self, source, **kw):
        """A `LiveReader` for `source` that prepares frames for this model (kw: timeout, reconnect, ...)."""
        from vidcli.video.live import LiveReader

        step = self.card.frame_step
        keep = (lambda i: i % step == 0) if self.stream and step > 1 else None
        capacity = STREAM_BUFFER if self.stream else self.window
        return LiveReader(source, prepare_for(self.card), capacity=capacity, keep=keep, **kw)

    def warm_up(self) -> None:
        """One prediction on black frames, so the first real one is not slowed by the runtime's first call."""
        black = np.zeros((*self.card.size, self.card.channels), np.uint8)
        if self.stream:
            Running(self.model)(black)
        else:
            self.model(self.card.preprocess(np.stack([black] * self.card.frames)[None]))

    def predictions(self, reader, duration: float | None = None) -> Iterator[Prediction]:
        """Predictions while `reader` has frames (up to `duration` seconds of the stream)."""
        run = self._stream if self.stream else self._windows
        yield from run(reader, duration)

    def _result(self, logits: np.ndarray, frame) -> Prediction:
        self.predictions_made += 1
        return Prediction(self.source, frame.index, frame.time, top_k(softmax(logits), self.card.labels, self.top),
                          self.name, frame.arrived)

    def _windows(self, reader, duration: float | None) -> Iterator[Prediction]:
        window: deque = deque(maxlen=self.window)
        last = None
        for batch in reader.batches():
            for frame in batch:
                if duration is not None and frame.time >= duration:
                    return
                if window and window[-1].connection != frame.connection:
                    window.clear()
                window.append(frame)
            if len(window) == self.window and (last is None or window[-1].index - last >= self.stride):
                clip = np.stack([window[i].image for i in self.positions])
                logits = self.model(self.card.preprocess(clip[None]))[0]
                last = window[-1].index
                yield self._result(logits, window[-1])

    def _stream(self, reader, duration: float | None) -> Iterator[Prediction]:
        running = Running(self.model)
        last = None
        for batch in reader.batches():
            for frame in batch:
                if duration is not None and frame.time >= duration:
                    return
                logits = running(frame.image)
                if last is None or frame.index - last >= self.stride:
                    last = frame.index
                    yield self._result(logits, frame)
                if reader.should_stop():
                    return


def summary(reader, predictions: int, started: float) -> str:
    """The closing stderr line: what was read, predicted and dropped."""
    taken = f" ({reader.frames} to the model)" if reader.frames != reader.decoded else ""
    dropped = f"{reader.dropped} frames dropped (the model was slower than the stream)" if reader.dropped else \
        "no frames dropped"
    return (f"{reader.source.name}: {reader.decoded} frames{taken} in {time.monotonic() - started:.1f} s, "
            f"{predictions} predictions, {dropped}")


def download(url: str, folder: Path, timeout: float = 60) -> Path:
    """A video URL fetched into a new folder under `folder`, under its own name (through a temporary name, with
    retries and resume), for prediction like any file; `timeout`: seconds to wait for the server."""
    import tempfile
    from urllib.parse import unquote, urlsplit

    from vidcli.download import download as fetch

    name = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(unquote(urlsplit(url).path)).name).strip("._") or "video"
    return fetch(url, Path(tempfile.mkdtemp(dir=folder)) / name, description=f"downloading {name}", timeout=timeout)
