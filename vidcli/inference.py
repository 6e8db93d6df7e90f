"""Prediction with ONNX Runtime alone: no TensorFlow, no PyTorch, so `predict` starts fast.

The ONNX file carries everything needed (labels, frames, frame step, size, normalisation), so a
model file is all a user ships. A run folder that was never exported falls back to its framework.
"""

from __future__ import annotations

import glob
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vidcli.errors import VidcliError


@dataclass
class ModelInfo:
    labels: list[str]
    input_kind: str
    frames: int
    frame_step: int
    size: tuple[int, int]
    channels: int
    pre: dict
    source: str
    sampling: str = "center"  # "segments" / "dense": TSM's sampling with resize-then-crop


def _meta_info(meta: dict[str, str], source: str) -> ModelInfo:
    if "labels" not in meta:
        raise VidcliError(f"{source}: no class labels in the model's metadata (export it with `vidcli export-onnx`)")
    try:
        return ModelInfo(
            labels=json.loads(meta["labels"]),
            input_kind=meta.get("input_kind", "videos"),
            frames=int(meta["frames"]),
            frame_step=int(meta.get("frame_step", 1)),
            size=tuple(json.loads(meta["size"])),
            channels=int(meta.get("channels", 3)),
            pre={**json.loads(meta["normalization"]), "layout": meta.get("layout", "NTHWC")},
            source=source,
            sampling=meta.get("sampling", "center"),
        )
    except (KeyError, ValueError) as exc:
        raise VidcliError(f"{source}: model metadata incomplete or malformed ({exc})") from exc


class OnnxModel:
    def __init__(self, path: Path, threads: int = 0):
        import onnxruntime as ort

        if not path.is_file():
            raise VidcliError(f"{path}: model file not found")
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own untyped errors for unreadable files
            raise VidcliError(f"{path}: not a loadable ONNX model ({str(exc).splitlines()[0][:200]})") from exc
        self.info = _meta_info(self.session.get_modelmeta().custom_metadata_map, str(path))
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: x})[0]


def open_onnx(path: Path):
    """An ONNX file as a clip -> logits callable; a stream model is fed each clip frame by frame."""
    model = OnnxModel(path)
    if "stream_states" in model.session.get_modelmeta().custom_metadata_map:
        from vidcli.streaming import OnnxStream

        return OnnxStream(path)
    return model


class FrameworkModel:
    """A trained run without an ONNX file: its own framework predicts (slower to start)."""

    def __init__(self, run):
        from vidcli.backends import registry
        from vidcli.exporting import metadata

        rec = run.recipe
        self.backend = registry.backend(rec.model.arch)
        self.model = self.backend.load_for_run(run)
        shape = tuple(int(d) for d in self.model.input_shape[1:]) if hasattr(self.model, "input_shape") else None
        if shape is None or any(d is None for d in shape):
            shape = (rec.data.frames, *rec.data.size, 3)
        self.info = _meta_info(metadata(run, shape), str(run.path))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.backend.predict_batch(self.model, x)


def resolve_model(model: Path | None, runs_dir: Path = Path("runs")):
    """--model: an .onnx file, a run folder (its model.onnx, else its checkpoint), or the newest run."""
    from vidcli.runs import Run, newest

    if model is None:
        run = newest(runs_dir)
    elif model.suffix == ".onnx" or model.is_file():
        if model.suffix in (".keras", ".pt") and model.parent.joinpath("run.json").is_file():
            run = Run.open(model.parent)
        else:
            return open_onnx(model)
    else:
        run = Run.open(model)
    run.labels  # noqa: B018  (a run without labels is an error before anything loads)
    onnx_file = run.file("model.onnx")
    return open_onnx(onnx_file) if onnx_file.is_file() else FrameworkModel(run)


def expand_sources(items: list[str]) -> list[Path]:
    """Files, folders (every video inside, recursively) and quoted globs, in a stable order."""
    from vidcli.datasets.layout import is_video

    out: list[Path] = []
    for item in items:
        p = Path(item)
        if any(ch in item for ch in "*?[") and not p.exists():
            matches = sorted(Path(m) for m in glob.glob(item, recursive=True))
            if not matches:
                raise VidcliError(f"{item}: no files match")
            out.extend(m for m in matches if m.is_file())
        elif p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and (is_video(f) or f.suffix == ".npy"))
            if not found:
                raise VidcliError(f"{p}: no videos found in folder")
            out.extend(found)
        else:
            out.append(p)
    return out


def load_input(path: Path, info: ModelInfo, clips: int, index: int | None = None, split: str = "test") -> np.ndarray:
    """uint8 (clips, T, H, W, C) for a video, or (1, D, H, W, 1) for a `.npy` volume or entry `index` of an npz."""
    if (path.suffix == ".npz") != (index is not None):
        raise VidcliError(f"{path}: --index picks a volume from an .npz file; give both (e.g. x.npz --index 5)")
    if path.suffix == ".npz":
        from vidcli.datasets.volumes import volume_from_npz

        return volume_from_npz(path, split, index, info)[None]
    if path.suffix == ".npy":
        from vidcli.datasets.volumes import volume_for_model

        return volume_for_model(path, info)[None]
    if info.sampling in ("segments", "dense"):
        from vidcli.datasets.source import segment_views

        return segment_views(path, "videos", info.frames, info.size, info.sampling, clips=clips)
    from vidcli.video.decode import read_clips

    return read_clips(path, info.frames, info.frame_step, info.size, clips=clips, start="center")


def predict(model, sources: list[Path], top_k: int = 5, clips: int = 1, index: int | None = None,
            split: str = "test") -> Iterator[dict]:
    """One result per source: top-k labels with probabilities (average over `clips` clips)."""
    from vidcli.exporting import to_model_input

    info = model.info
    k = max(1, min(top_k, len(info.labels)))
    for src in sources:
        name = str(src) if index is None else f"{src}[{split}:{index}]"
        try:
            x = to_model_input(load_input(src, info, clips, index, split), info.pre)
            logits = model(x)
        except VidcliError as exc:
            yield {"source": name, "error": str(exc), "model": info.source}
            continue
        z = logits - logits.max(axis=1, keepdims=True)
        probs = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
        mean = probs.mean(axis=0)
        order = np.argsort(-mean)[:k]
        yield {
            "source": name,
            "top_k": [{"label": info.labels[i], "probability": round(float(mean[i]), 6)} for i in order],
            "clips": int(x.shape[0]),
            "model": info.source,
        }
