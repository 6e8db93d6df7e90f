"""The model-file contract: what a client needs to feed a model and read its output, without vidcli.

A `ModelCard` travels inside every exported ONNX file as `metadata_props` (all values strings, JSON where
structured) and is what `predict`, `eval` and `benchmark` read back. It states the labels, the frame sampling,
the resize rule, the colour order, the value range and normalisation, the input layout and the output (logits).
Cards are validated when read: a hostile or damaged file is one clear error, never a traceback later on.
This module is the bottom floor: it imports no other part of vidcli but `errors`, and no framework.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from vidcli.errors import VidcliError

INPUT = "video"  # the input name of clip models
OUTPUT = "logits"  # the output: unnormalised class scores (softmax gives probabilities)
STATES_KEY = "stream_states"  # stream models: JSON list of StateSpec
LAYOUTS = ("NTHWC", "NTCHW", "N(TC)HW")  # N(TC)HW: NTCHW with time and channels merged, as TSN takes it
FRAME_LAYOUTS = ("NTHWC", "NCHW")  # a stream model's one frame: (1, 1, H, W, C) or (1, C, H, W)
RESIZE_RULES = ("letterbox", "cover_crop")
INTERPOLATION = "area when shrinking, bilinear when enlarging (OpenCV INTER_AREA / INTER_LINEAR)"
CROP_RATIO = 256 / 224  # cover_crop: frames first cover size * CROP_RATIO (the TSM reference's 256 for 224)


@dataclass(frozen=True)
class StateSpec:
    """One state of a stream model: fed as input `name` (zeros at the first frame), returned as `output`."""

    name: str
    output: str
    shape: tuple[int, ...]
    dtype: str


@dataclass
class StreamSpec:
    """How a stream model is fed one frame per call, with its states carried from call to call."""

    input: str
    frame_layout: str
    states: list[StateSpec]
    logits: str = "running"  # "running": logits of all frames so far; "per_frame": this frame's logits only


@dataclass
class ModelCard:
    labels: list[str]
    frames: int  # frames per clip (or depth of a volume)
    size: tuple[int, int]  # (height, width) of each frame
    channels: int = 3
    input_kind: str = "videos"  # videos | frames | volumes
    layout: str = "NTHWC"
    scale: float = 1 / 255
    mean: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    std: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])
    sampling: str = "center"  # center (frame_step apart, centred clip) | segments | dense
    frame_step: int = 1
    resize: str = "letterbox"
    flip: bool = False  # trained with random horizontal flips (never applied at prediction)
    arch: str = ""
    extra: dict[str, str] = field(default_factory=dict)  # provenance: run, checkpoint, producer ...
    stream: StreamSpec | None = None

    # -- reading and writing ---------------------------------------------------------------------------

    def to_metadata(self) -> dict[str, str]:
        meta = {
            "labels": json.dumps(self.labels),
            "input_kind": self.input_kind,
            "frames": str(self.frames),
            "frame_step": str(self.frame_step),
            "size": json.dumps(list(self.size)),
            "channels": str(self.channels),
            "sampling": self.sampling,
            "flip": json.dumps(self.flip),
            "layout": self.layout,
            "normalization": json.dumps({"scale": self.scale, "mean": self.mean, "std": self.std}),
            "arch": self.arch,
            **self.describe(),
            **self.extra,
        }
        if self.stream is not None:
            meta.update({STATES_KEY: json.dumps([asdict(s) for s in self.stream.states]), "stream": "true",
                         "stream_input": self.stream.input, "stream_output": OUTPUT,
                         "stream_frame_layout": self.stream.frame_layout, "stream_logits": self.stream.logits})
        return meta

    def describe(self) -> dict[str, str]:
        """The preprocessing in words and numbers, for clients that reproduce it without vidcli."""
        if self.input_kind == "volumes":
            sampling = "the whole volume (depth x height x width), never resized"
            resize = "none"
        elif self.sampling == "center":
            sampling = (f"{self.frames} frames {self.frame_step} apart, the clip centred in the video; N clips "
                        "spread evenly from start to end when averaging several")
            resize = f"letterbox: fit inside {self.size[0]}x{self.size[1]} keeping the aspect ratio, " \
                     "pad with black (0), centred"
        else:
            how = ("one frame at the centre of each of" if self.sampling == "segments"
                   else "I3D-style dense sampling, stride 64 / frames, of")
            sampling = f"{how} {self.frames} equal segments of the video"
            resize = (f"cover_crop: resize keeping the aspect ratio so the frame covers {self.size[0]}x"
                      f"{self.size[1]} times {CROP_RATIO:.6g}, then take the centre {self.size[0]}x{self.size[1]} crop")
        channels = "RGB" if self.channels == 3 else "gray"
        crop = {"crop_ratio": f"{CROP_RATIO:.10g}"} if self.resize == "cover_crop" else {}
        return {
            **crop,
            "color": channels,
            "resize": self.resize,
            "resize_rule": resize,
            "interpolation": INTERPOLATION,
            "pad_value": "0",
            "frame_sampling": sampling,
            "value_range": "uint8 0..255, times scale, minus mean, divided by std (per channel)",
            "input": INPUT,
            "output": f"{OUTPUT}: unnormalised class scores, one row per input clip; softmax for probabilities",
        }

    @classmethod
    def from_metadata(cls, meta: dict[str, str], source: str) -> ModelCard:
        """The card stored in a model file, checked field by field (hostile files are one clear error)."""
        if "labels" not in meta:
            raise VidcliError(f"{source}: no class labels in the model metadata (export it with `vidcli export-onnx`)")

        def bad(key: str, why: str) -> VidcliError:
            return VidcliError(f"{source}: model metadata '{key}' {why}")

        def load(key: str, default: Any = None) -> Any:
            if key not in meta:
                if default is None:
                    raise bad(key, "is missing")
                return default
            try:
                return json.loads(meta[key])
            except ValueError:
                raise bad(key, f"is not valid JSON ({meta[key][:60]!r})") from None

        def integer(key: str, default: int | None = None, low: int = 1) -> int:
            text = meta.get(key)
            if text is None:
                if default is None:
                    raise bad(key, "is missing")
                return default
            try:
                value = int(text)
            except ValueError:
                raise bad(key, f"must be an integer, got {text[:40]!r}") from None
            if value < low:
                raise bad(key, f"must be >= {low}, got {value}")
            return value

        labels = load("labels")
        if not isinstance(labels, list) or not labels or not all(isinstance(x, str) for x in labels):
            raise bad("labels", "must be a non-empty JSON list of class names")
        size = load("size")
        if (not isinstance(size, list) or len(size) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in size)):
            raise bad("size", f"must be [height, width] of positive integers, got {meta.get('size')!r}")
        channels = integer("channels", 3)
        norm = load("normalization")
        if not isinstance(norm, dict):
            raise bad("normalization", "must be a JSON object with scale, mean and std")
        try:
            scale = float(norm["scale"])
            mean = [float(v) for v in norm["mean"]]
            std = [float(v) for v in norm["std"]]
        except (KeyError, TypeError, ValueError):
            raise bad("normalization", "must hold a number 'scale' and lists 'mean' and 'std'") from None
        if len(mean) != channels or len(std) != channels:
            raise bad("normalization", f"mean and std need {channels} values (one per channel)")
        if not all(math.isfinite(v) for v in (scale, *mean, *std)) or not all(v > 0 for v in std) or scale <= 0:
            raise bad("normalization", "must be finite, with scale and std above 0")
        layout = meta.get("layout", "NTHWC")
        if layout not in LAYOUTS:
            raise bad("layout", f"must be one of {', '.join(LAYOUTS)}, got {layout!r}")
        sampling = meta.get("sampling", "center")
        if sampling not in ("center", "segments", "dense"):
            raise bad("sampling", f"must be center, segments or dense, got {sampling!r}")
        resize = meta.get("resize", "letterbox" if sampling == "center" else "cover_crop")
        if resize not in RESIZE_RULES:
            raise bad("resize", f"must be one of {', '.join(RESIZE_RULES)}, got {resize!r}")
        flip = load("flip", False)
        known = set(cls.__dataclass_fields__) | {"normalization", "crop_ratio", *cls(["x"], 1, (1, 1)).describe()} | {
            STATES_KEY, "stream", "stream_input", "stream_output", "stream_frame_layout", "stream_logits"}
        card = cls(labels=labels, frames=integer("frames"), size=(size[0], size[1]), channels=channels,
                   input_kind=meta.get("input_kind", "videos"), layout=layout, scale=scale, mean=mean, std=std,
                   sampling=sampling, frame_step=integer("frame_step", 1), resize=resize, flip=bool(flip),
                   arch=meta.get("arch", ""), extra={k: v for k, v in meta.items() if k not in known})
        if STATES_KEY in meta:
            card.stream = _stream_spec(meta, source, load)
        return card

    # -- using it --------------------------------------------------------------------------------------

    def preprocess(self, clips: np.ndarray) -> np.ndarray:
        """uint8 (N, T, H, W, C) -> the float32 model input this card describes."""
        x = clips.astype(np.float32) * np.float32(self.scale)
        x = (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return to_layout(x, self.layout)

    def preprocess_frame(self, frame: np.ndarray) -> np.ndarray:
        """One uint8 frame (H, W, C) -> a stream model's frame input."""
        x = self.preprocess(frame[None, None])
        if self.stream is not None and self.stream.frame_layout == "NCHW":
            return np.ascontiguousarray(x.reshape(1, self.channels, *frame.shape[:2]))
        return x

    @property
    def clip_shape(self) -> tuple[int, ...]:
        """One uint8 sample as decoding gives it: (T, H, W, C)."""
        return (self.frames, *self.size, self.channels)

    def input_shape(self, batch: int | None = None) -> tuple[Any, ...]:
        """The model input's shape for `batch` clips (None: any batch)."""
        t, (h, w), c = self.frames, self.size, self.channels
        return {"NTHWC": (batch, t, h, w, c), "NTCHW": (batch, t, c, h, w), "N(TC)HW": (batch, t * c, h, w)}[
            self.layout]


def to_layout(x: np.ndarray, layout: str) -> np.ndarray:
    """(N, T, H, W, C) values -> `layout`."""
    if layout == "NTHWC":
        return x
    x = np.ascontiguousarray(x.transpose(0, 1, 4, 2, 3))
    return x if layout == "NTCHW" else x.reshape(x.shape[0], -1, *x.shape[3:])


def _stream_spec(meta: dict[str, str], source: str, load) -> StreamSpec:
    raw = load(STATES_KEY)
    try:
        states = [StateSpec(str(s["name"]), str(s["output"]), tuple(int(d) for d in s["shape"]), str(s["dtype"]))
                  for s in raw]
    except (TypeError, KeyError, ValueError):
        raise VidcliError(f"{source}: malformed '{STATES_KEY}' metadata (a list of name/output/shape/dtype)") from None
    if any(d < 0 for s in states for d in s.shape):
        raise VidcliError(f"{source}: malformed '{STATES_KEY}' metadata (negative dimension)")
    frame_layout = meta.get("stream_frame_layout", "NTHWC")
    if frame_layout not in FRAME_LAYOUTS:
        raise VidcliError(f"{source}: model metadata 'stream_frame_layout' must be one of {', '.join(FRAME_LAYOUTS)}")
    logits = meta.get("stream_logits", "running")
    if logits not in ("running", "per_frame"):
        raise VidcliError(f"{source}: model metadata 'stream_logits' must be running or per_frame")
    return StreamSpec(meta.get("stream_input", "image"), frame_layout, states, logits)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 (stable for large logits)."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def top_k(probs: np.ndarray, labels: list[str], k: int) -> list[dict[str, Any]]:
    """The k most probable labels of one probability vector, rounded for printing."""
    order = np.argsort(-probs)[: max(1, min(k, len(labels)))]
    return [{"label": labels[i], "probability": round(float(probs[i]), 6)} for i in order]
