"""`vidcli export-onnx`: an ONNX file that carries its labels and preprocessing, checked for parity.

The framework and ONNX Runtime run the same batch (real clips from the run's data when present);
the file is written only when they agree within the tolerance, and the difference is printed
either way.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from vidcli import __version__, fsio
from vidcli.backends import registry
from vidcli.console import log
from vidcli.errors import VidcliError, fail
from vidcli.runs import Run


def preprocessing(rec) -> dict:
    """How raw uint8 frames become model input; stored in the ONNX metadata for `predict`."""
    backend = registry.backend_name(rec.model.arch)
    if backend == "torch":
        return {"layout": "NTCHW", "scale": 1 / 255, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    channels = 1 if rec.data.format == "volumes" else 3
    return {"layout": "NTHWC", "scale": 1 / 255, "mean": [0.0] * channels, "std": [1.0] * channels}


def metadata(run: Run, sample_shape: tuple[int, ...]) -> dict[str, str]:
    rec = run.recipe
    pre = preprocessing(rec)
    return {
        "labels": json.dumps(run.labels),
        "input_kind": rec.data.format,
        "frames": str(sample_shape[0]),
        "frame_step": str(rec.data.frame_step),
        "size": json.dumps(list(sample_shape[1:3])),
        "channels": str(sample_shape[3]),
        "sampling": "center" if rec.data.sampling == "step" else rec.data.sampling,
        "flip": json.dumps(rec.data.flip),
        "layout": pre["layout"],
        "normalization": json.dumps({"scale": pre["scale"], "mean": pre["mean"], "std": pre["std"]}),
        "arch": rec.model.arch,
        "run": str(run.path),
        "producer": f"vidcli {__version__}",
    }


def _sample(run: Run, batch: int = 2) -> tuple[np.ndarray, str]:
    """A few real clips from the run's data, or random input of the right shape when none is at hand."""
    from vidcli.datasets.source import open_source

    rec = run.recipe
    for split in ("test", "val", "train"):
        try:
            src = open_source(rec.data, split, run.labels)
            clips = np.stack([src.load(i) for i in range(min(batch, len(src)))])
            return clips, f"{split} clips"
        except VidcliError:
            continue
    raise fail(f"{run.path}: no data found at {rec.data.root} to check the export against")


def to_model_input(clips: np.ndarray, pre: dict) -> np.ndarray:
    """uint8 (N, T, H, W, C) -> float32 model input as `pre` describes."""
    x = clips.astype(np.float32) * np.float32(pre["scale"])
    x = (x - np.asarray(pre["mean"], np.float32)) / np.asarray(pre["std"], np.float32)
    if pre["layout"] == "NTCHW":
        x = np.ascontiguousarray(x.transpose(0, 1, 4, 2, 3))
    return x


def with_metadata(raw: bytes, meta: dict[str, str]) -> bytes:
    """The ONNX model `raw` with `meta` as its metadata_props (replacing any it had)."""
    import onnx

    proto = onnx.load_from_string(raw)
    del proto.metadata_props[:]
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    return proto.SerializeToString()


def export(run: Run, out: Path | None = None, opset: int | None = None) -> dict:
    import onnxruntime as ort

    rec = run.recipe
    from vidcli import streaming

    if streaming.is_stream_recipe(rec):
        return streaming.export_stream(run, out, opset)
    out = out or run.file("model.onnx")
    clips, what = _sample(run)
    pre = preprocessing(rec)
    x = to_model_input(clips, pre)
    backend = registry.backend(rec.model.arch)
    raw, reference = backend.export_onnx(run, x, opset or rec.export.opset)
    meta = metadata(run, tuple(clips.shape[1:]))
    data = with_metadata(raw, meta)
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x})[0]
    diff = float(np.abs(got - reference).max())
    tol = rec.export.tolerance
    log(f"parity on {len(x)} {what}: max |framework - onnxruntime| = {diff:.3g} (tolerance {tol:g})")
    if not diff <= tol:
        raise fail(f"ONNX export differs from the framework by {diff:.3g} > {tol:g}; {out} not written")
    fsio.write_bytes(out, data)
    return {"path": str(out), "max_abs_diff": diff, "tolerance": tol, "opset": opset or rec.export.opset,
            "metadata": meta, "bytes": len(data)}
