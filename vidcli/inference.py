"""Prediction with ONNX Runtime alone: no TensorFlow, no PyTorch, so `predict` starts fast.

An exported file carries its model card (labels, sampling, resize rule, normalisation, layout), so the file is
all a user ships. Which model a command uses (a file, a run, its checkpoint) is `vidcli.models`' business;
this module reads ONNX files and turns inputs (videos, volumes) into the card's model input.
"""

from __future__ import annotations

import glob
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from vidcli.errors import VidcliError
from vidcli.modelcard import ModelCard, softmax, top_k


def open_session(path: Path, threads: int = 0, providers: list[str] | None = None):
    """An ONNX Runtime session and the model card stored in the file, checked against the graph."""
    import onnxruntime as ort

    if not path.is_file():
        raise VidcliError(f"{path}: model file not found")
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = threads
    try:
        session = ort.InferenceSession(str(path), opts, providers=providers or ["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own untyped errors for unreadable files
        raise VidcliError(f"{path}: not a loadable ONNX model ({str(exc).splitlines()[0][:200]})") from exc
    card = ModelCard.from_metadata(session.get_modelmeta().custom_metadata_map, str(path))
    outputs = session.get_outputs()
    width = outputs[0].shape[-1] if outputs and outputs[0].shape else None
    if isinstance(width, int) and width != len(card.labels):
        raise VidcliError(f"{path}: the model has {width} outputs but its metadata lists {len(card.labels)} labels")
    return session, card


class OnnxModel:
    """A clip model file: float model input (the card's layout) -> logits."""

    def __init__(self, path: Path, threads: int = 0):
        self.path = path
        self.session, self.card = open_session(path, threads)
        if self.card.stream is not None:
            raise VidcliError(f"{path}: a stream model (one frame per call); use --stream, or export the clip model")
        first = self.session.get_inputs()[0]
        self.input_name = first.name
        want = self.card.input_shape()
        if first.shape is not None and len(first.shape) != len(want):
            raise VidcliError(f"{path}: the model input has rank {len(first.shape)}, its metadata says layout "
                              f"{self.card.layout} (rank {len(want)})")
        fixed = [(i, d, w) for i, (d, w) in enumerate(zip(first.shape or [], want, strict=False))
                 if i and isinstance(d, int) and d != w]
        if fixed:
            raise VidcliError(f"{path}: the model input is {list(first.shape)}, its metadata describes "
                              f"{list(want)} ({self.card.layout}; frames, size, channels)")
        self.batch = first.shape[0] if first.shape and isinstance(first.shape[0], int) else None  # a fixed batch

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self.batch and len(x) != self.batch:  # a graph exported for a fixed batch: call it as often as needed
            return np.concatenate([self(x[i : i + self.batch]) for i in range(0, len(x), self.batch)])
        try:
            return self.session.run(None, {self.input_name: x})[0]
        except Exception as exc:  # onnxruntime's own untyped errors: one line naming the file
            why = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
            raise VidcliError(f"{self.path}: ONNX Runtime could not run the model ({why})") from None


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


def load_input(path: Path, card: ModelCard, clips: int, index: int | None = None, split: str = "test") -> np.ndarray:
    """uint8 (clips, T, H, W, C) for a video, or (1, D, H, W, 1) for a `.npy` volume or entry `index` of an npz."""
    if (path.suffix == ".npz") != (index is not None):
        raise VidcliError(f"{path}: --index picks a volume from an .npz file; give both (e.g. x.npz --index 5)")
    if path.suffix in (".npz", ".npy") and card.input_kind != "volumes":
        raise VidcliError(f"{path}: a volume; the model takes videos")
    if path.suffix in (".npz", ".npy") and clips != 1:
        raise VidcliError(f"{path}: --clips: a volume is used whole; there is one view of it")
    if path.suffix == ".npz":
        from vidcli.datasets.volumes import volume_from_npz

        return volume_from_npz(path, split, index, card)[None]
    if path.suffix == ".npy":
        from vidcli.datasets.volumes import volume_for_model

        return volume_for_model(path, card)[None]
    if card.input_kind == "volumes":
        raise VidcliError(f"{path}: the model takes volumes (.npy, or an .npz with --index), not videos")
    if card.sampling in ("segments", "dense"):
        from vidcli.datasets.source import segment_views

        return segment_views(path, "videos", card.frames, card.size, card.sampling, clips=clips)
    from vidcli.video.decode import read_clips

    return read_clips(path, card.frames, card.frame_step, card.size, clips=clips, start="center")


def predict(model, sources: list[Path], top: int = 5, clips: int = 1, index: int | None = None,
            split: str = "test", name: str = "", batch: int = 8, workers: int = 0) -> Iterator[dict]:
    """One result per source, in order: top-k labels with probabilities (the mean over `clips` clips). `model`
    is any callable float input -> logits with a `card` (see `vidcli.models`). Inputs are decoded in a thread
    pool one batch ahead, and up to `batch` inputs go through the model in one call."""
    from concurrent.futures import ThreadPoolExecutor

    from vidcli.scoring import threads_for

    card = model.card

    def load(src: Path) -> np.ndarray | VidcliError:
        try:
            return card.preprocess(load_input(src, card, clips, index, split))
        except VidcliError as exc:
            return exc

    chunks = [sources[i : i + batch] for i in range(0, len(sources), max(1, batch))]
    pool = ThreadPoolExecutor(threads_for(workers), thread_name_prefix="vidcli-decode")
    try:
        pending = [pool.submit(load, s) for s in chunks[0]] if chunks else []
        for k, chunk in enumerate(chunks):
            inputs = [f.result() for f in pending]
            pending = [pool.submit(load, s) for s in chunks[k + 1]] if k + 1 < len(chunks) else []
            yield from _answer(model, chunk, inputs, top, index, split, name)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _answer(model, chunk: list[Path], inputs: list, top: int, index: int | None, split: str,
            name: str) -> Iterator[dict]:
    good = [x for x in inputs if not isinstance(x, VidcliError)]
    try:
        logits = model(np.concatenate(good)) if good else None
    except VidcliError as exc:  # the model itself failed: every input of this call says so
        good, inputs = [], [exc if not isinstance(x, VidcliError) else x for x in inputs]
    views = np.cumsum([len(x) for x in good])[:-1]  # inputs may differ in their number of views
    probs = iter(np.split(softmax(logits), views)) if good else iter(())
    for src, x in zip(chunk, inputs, strict=True):
        shown = str(src) if index is None else f"{src}[{split}:{index}]"
        if isinstance(x, VidcliError):
            yield {"source": shown, "error": str(x), "model": name}
            continue
        yield {"source": shown, "top_k": top_k(next(probs).mean(axis=0), model.card.labels, top),
               "clips": int(x.shape[0]), "model": name}
