"""`vidcli export-onnx`: an ONNX file that carries its model card, checked for parity with the framework.

The framework and ONNX Runtime run the same input (real clips from the run's data when present); the file is
written only when they agree within the tolerance, and the difference is printed either way. A stream model is
exported as one step (frame and states in, logits and states out) and checked frame by frame.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from vidcli import __version__, fsio
from vidcli.backends import registry
from vidcli.console import log
from vidcli.errors import VidcliError, fail
from vidcli.modelcard import ModelCard
from vidcli.recipe import check_opset
from vidcli.runs import Run


def with_metadata(raw: bytes, meta: dict[str, str]) -> bytes:
    """The ONNX model `raw` with `meta` as its metadata_props (replacing any it had)."""
    import onnx

    proto = onnx.load_from_string(raw)
    del proto.metadata_props[:]
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    return proto.SerializeToString()


def sample_clips(rec: Any, labels: list[str], card: ModelCard, batch: int = 2) -> tuple[np.ndarray, str]:
    """A few real clips from the recipe's data, or (no data at hand) seeded random frames of the card's shape."""
    from vidcli.datasets.source import open_source

    for split in ("test", "val", "train"):
        try:
            src = open_source(rec.data, split, labels)
            return np.stack([src.load(i) for i in range(min(batch, len(src)))]), f"{split} clips"
        except VidcliError:
            continue
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (batch, *card.clip_shape), dtype=np.uint8), "random clips (no data found)"


def export(run: Run, out: Path | None = None, opset: int | None = None, checkpoint: str = "best") -> dict:
    """Export a run's `checkpoint` (best or last) to `out` (default RUN/model.onnx)."""
    from vidcli import models

    rec = run.recipe
    labels = run.labels
    opset = check_opset(opset if opset is not None else rec.export.opset, registry.backend_name(rec.model.arch),
                        "--opset" if opset is not None else "export.opset")
    backend = registry.backend(rec.model.arch)
    path = backend.checkpoint(run, checkpoint)
    if not path.is_file():
        raise VidcliError(f"{run.path}: no {path.name}; has it been trained?")
    card = models.run_card(run)
    model = backend.load(path, rec, len(labels))
    epoch = backend.checkpoint_state(path).get("epoch")
    log(f"model: {path} (run {run.path}" + (f", epoch {epoch})" if epoch else ")"))
    card.extra = {"run": str(run.path), "producer": f"vidcli {__version__}", **models.fingerprint(path),
                  **({"checkpoint_epoch": str(epoch)} if epoch else {})}
    clips, what = sample_clips(rec, labels, card, batch=1 if _is_stream(rec) else 2)
    return export_model(backend, model, card, clips, what, out or run.file("model.onnx"), opset, rec.export.tolerance,
                        stream=_is_stream(rec))


def export_recipe(rec: Any, out: Path, opset: int | None = None, labels_file: Path | None = None,
                  origin: dict[str, str] | None = None) -> dict:
    """Build a recipe's model with its `model.pretrained` weights (no training) and export it: how release
    weights run zero-shot. The class count is the weights file's head; the names: `labels_file`, else the data's,
    else the release's list (Kinetics-400/600), else numbered. Names that do not fit the head are refused (the
    exported model would have a random head)."""
    from vidcli import labels as labels_mod
    from vidcli import models

    params = registry.check_recipe(rec)
    spec = registry.spec(rec.model.arch)
    opset = check_opset(opset if opset is not None else rec.export.opset, spec.backend,
                        "--opset" if opset is not None else "export.opset")
    source = rec.model.pretrained or getattr(params, "pretrained", None)
    if not source:
        raise VidcliError(f"{rec.name}: nothing to export: the recipe names no pretrained weights (model.pretrained); "
                          "its model would be random: train it and export the run")
    count = registry.head_classes(rec, source)
    data = _data_classes(rec) if rec.data.root and Path(rec.data.root).exists() else None
    if labels_file is not None:
        names = labels_mod.read_file(labels_file, count)
    elif data is not None:
        names = data
        if len(names) != count:
            raise VidcliError(f"{source} has a head of {count} classes, the data at {rec.data.root} {len(names)}: "
                              "train the recipe first (or give --labels with the weights' own class names)")
    else:
        listed = spec.labels_of(source)
        names = (labels_mod.release_list(listed, count) if listed else None) or labels_mod.numbered(count)
    backend = registry.backend(rec.model.arch)
    shape = models.sample_shape(rec)
    model = backend.build(rec, len(names), shape)
    card = spec.card(rec, names, shape)
    card.extra = {**(origin or {}), "producer": f"vidcli {__version__}",
                  **({"pretrained": str(source)} if source else {})}
    clips, what = sample_clips(rec, names, card, batch=1 if spec.is_stream(params) else 2)
    return export_model(backend, model, card, clips, what, out, opset, rec.export.tolerance,
                        stream=spec.is_stream(params))


def release_onnx(name: str) -> Path | None:
    """`-m movinet_a0_base`: a known release name, exported once (weights downloaded) into the cache; None when
    no family knows the name."""
    from vidcli import recipe as recipe_mod

    for arch in registry.FAMILIES:
        raw = registry.spec(arch).releases(name)
        if raw is None:
            continue
        from vidcli.video.cache import default_root

        cache = default_root() / "exports"
        path = cache / f"{name}.onnx"
        if not path.is_file() or _numbered(path):  # numbered labels: the class names were not at hand then
            log(f"{name}: exporting the release for zero-shot use (once) to {path}")
            export_recipe(recipe_mod.parse(raw), path, origin={"release": name})
        return path
    return None


def _numbered(path: Path) -> bool:
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    return meta.get("labels", "").startswith('["class_0"')


def _data_classes(rec: Any) -> list[str] | None:
    from vidcli.datasets.source import open_source

    try:
        return list(open_source(rec.data, "train").classes)
    except VidcliError:
        return None


def _is_stream(rec: Any) -> bool:
    return registry.spec(rec.model.arch).is_stream(registry.check_recipe(rec))


def export_model(backend, model, card: ModelCard, clips: np.ndarray, what: str, out: Path, opset: int,
                 tolerance: float, stream: bool = False) -> dict:
    """Export `model`, check it against the framework on `clips`, and write `out` only when they agree."""
    model = backend.exported(model)
    if stream:
        return _export_stream(backend, model, card, clips[:1], what, out, opset, tolerance)
    import onnxruntime as ort

    x = card.preprocess(clips)
    reference = backend.forward(model, card)(x)
    data = with_metadata(backend.export_onnx(model, x, opset), card.to_metadata())
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x})[0]
    diff = float(np.abs(got - reference).max())
    log(f"parity on {len(x)} {what}: max |framework - onnxruntime| = {diff:.3g} (tolerance {tolerance:g})")
    if not diff <= tolerance:
        raise fail(f"ONNX export differs from the framework by {diff:.3g} > {tolerance:g}; {out} not written")
    fsio.write_bytes(out, data)
    return {"path": str(out), "max_abs_diff": diff, "tolerance": tolerance, "opset": opset,
            "metadata": card.to_metadata(), "bytes": len(data)}


class _FrameworkStream:
    def __init__(self, stream, card: ModelCard):
        self._stream, self.card = stream, card

    def initial_states(self):
        return self._stream.initial_states()

    def step(self, frame, states):
        return self._stream.step(frame, states)


def _export_stream(backend, model, card: ModelCard, clip: np.ndarray, what: str, out: Path, opset: int,
                   tolerance: float) -> dict:
    """One stream step exported; parity frame by frame with states carried, on one clip."""
    from vidcli.streaming import OnnxStream, clip_logits

    raw, spec = backend.export_stream(model, card, opset)
    card.stream = spec
    data = with_metadata(raw, card.to_metadata())
    reference = clip_logits(_FrameworkStream(backend.stream(model, card), card), clip[0])
    with fsio.atomic_path(out, suffix=".onnx") as tmp:
        tmp.write_bytes(data)
        got = clip_logits(OnnxStream(tmp), clip[0])
        diff = float(np.abs(got - reference).max())
        log(f"stream parity on {len(clip[0])} frames of 1 of the {what}: max |framework - onnxruntime| = "
            f"{diff:.3g} (tolerance {tolerance:g})")
        if not diff <= tolerance:
            raise fail(f"stream ONNX export differs from the framework by {diff:.3g} > {tolerance:g}; "
                       f"{out} not written")
    return {"path": str(out), "max_abs_diff": diff, "tolerance": tolerance, "opset": opset,
            "metadata": card.to_metadata(), "bytes": len(data), "stream": True, "states": len(spec.states)}
