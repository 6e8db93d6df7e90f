"""`vidcli benchmark`: how fast a model runs in each format it has, and how fast its data loads.

Every format gets the same input: random uint8 frames of the model's clip shape, preprocessed as
`predict` preprocesses (so the values have their real range), seed 0. Each (format, batch) is called
once for its output, `warmup` more times untimed, then timed; `max_abs_diff` compares that output with
the framework's logits on the same input (the framework's own rows: 0). ONNX goes through the
backend's `export_onnx` and the metadata of `export-onnx`, into a temporary file; a run's own
model.onnx is not used, since its checkpoint may be newer.

A recipe is benchmarked as an untrained run: its model is built with random weights into a temporary
run folder, so recipe and run share every later step. No framework is imported here.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vidcli import __version__, fsio, runs
from vidcli import recipe as recipe_mod
from vidcli.backends import registry
from vidcli.console import log
from vidcli.errors import VidcliError, fail
from vidcli.modelcard import ModelCard

FORMATS = ("keras", "torch", "onnx")
DEVICES = ("auto", "cpu", "cuda")
PIPELINES = {"keras": "tf.data", "torch": "DataLoader"}
DEFAULT_CLASSES = 10
SEED = 0


@dataclass
class Target:
    """What is benchmarked: a run folder, a recipe (untrained) or an exported .onnx file."""

    source: str
    kind: str  # run | recipe | onnx
    card: ModelCard
    arch: str | None = None
    rec: recipe_mod.Recipe | None = None
    run: runs.Run | None = None
    onnx: Path | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def backend(self) -> str | None:
        return registry.backend_name(self.arch) if self.rec is not None and self.arch else None

    @property
    def formats(self) -> list[str]:
        return ["onnx"] if self.backend is None else [self.backend, "onnx"]

    @property
    def classes(self) -> list[str]:
        return self.card.labels

    @property
    def clip_shape(self) -> tuple[int, ...]:
        """One uint8 sample: (T, H, W, C), or (D, H, W, 1) for volumes."""
        return self.card.clip_shape

    @property
    def input_shape(self) -> tuple[int, ...]:
        """One sample as the model takes it (the card's layout)."""
        return tuple(self.card.input_shape(1)[1:])


# -- arguments --------------------------------------------------------------------------------------


def parse_batches(text: str) -> list[int]:
    """'1,8' -> [1, 8]: positive integers, duplicates dropped, order kept."""
    try:
        values = [int(part) for part in text.split(",")]
    except ValueError:
        values = []
    if not values or any(v < 1 for v in values):
        raise VidcliError(f"--batch: expected positive integers separated by commas, e.g. 1,8; got {text!r}")
    return list(dict.fromkeys(values))


def parse_formats(text: str | None, target: Target) -> list[str]:
    """The formats asked for (default: every format the target has), in the order given."""
    if text is None:
        return target.formats
    asked = [part.strip().lower() for part in text.split(",") if part.strip()]
    if not asked:
        raise VidcliError(f"--formats: expected names separated by commas, e.g. {','.join(target.formats)}")
    for name in asked:
        if name not in FORMATS:
            near = difflib.get_close_matches(name, FORMATS, n=1)
            hint = f"did you mean '{near[0]}'?" if near else f"known: {', '.join(FORMATS)}"
            raise VidcliError(f"--formats: unknown format '{name}' ({hint})")
        if name not in target.formats:
            what = "an .onnx file" if target.kind == "onnx" else f"a model of arch '{target.arch}'"
            raise VidcliError(f"--formats: {target.source} is {what}: it runs as {' or '.join(target.formats)}, "
                              f"not {name}")
    return list(dict.fromkeys(asked))


def parse_device(text: str | None) -> str:
    device = (text or "auto").strip().lower()
    if device not in DEVICES:
        raise VidcliError(f"--device: expected one of {', '.join(DEVICES)}, got {text!r}")
    return device


def resolve(path: Path | None, runs_dir: Path = Path("runs"), overrides: list[str] | None = None,
            classes: int | None = None) -> Target:
    """A run folder (default: the newest finished run under `runs_dir`), a recipe YAML or an .onnx file."""
    if path is None:
        from vidcli import models

        run = models.default_run(runs_dir)
        log(f"model: {run.path} (the newest finished run)")
        target = _from_run(run)
    elif not path.exists():
        raise VidcliError(f"{path}: not found")
    elif path.is_dir():
        target = _from_run(runs.Run.open(path))
    elif path.suffix.lower() in (".yaml", ".yml"):
        return _from_recipe(path, overrides or [], classes)
    elif path.suffix.lower() == ".onnx":
        target = _from_onnx(path)
    else:
        raise VidcliError(f"{path}: not a run folder, a recipe (.yaml) or an .onnx file")
    what = "a run folder" if target.run else "an .onnx file"
    for option, given in (("--set", overrides), ("--classes", classes is not None)):
        if given:
            raise VidcliError(f"{option} applies to a recipe; {target.source} is {what}")
    return target


def _stream_error(where: str) -> VidcliError:
    return VidcliError(f"{where}: a stream model (one frame per call); benchmark times clip models only "
                       "(benchmarks/bench_movinet.py and bench_tsm_online.py time stream models per frame)")


def _any_split(rec: recipe_mod.Recipe, classes: list[str] | None = None):
    from vidcli.datasets.source import open_source

    for split in ("train", "val", "test"):
        try:
            return open_source(rec.data, split, classes)
        except VidcliError:
            continue
    return None


def _check_clip_model(rec: recipe_mod.Recipe, where: str) -> None:
    if registry.spec(rec.model.arch).is_stream(registry.check_recipe(rec)):
        raise _stream_error(where)


def _from_run(run: runs.Run) -> Target:
    from vidcli import models

    rec = run.recipe
    _check_clip_model(rec, str(run.path))
    return Target(str(run.path), "run", models.run_card(run), rec.model.arch, rec, run)


def _from_recipe(path: Path, overrides: list[str], classes: int | None) -> Target:
    from vidcli import models

    rec = recipe_mod.load(path, overrides)
    _check_clip_model(rec, str(path))
    if classes is not None and classes < 1:
        raise VidcliError(f"--classes: must be at least 1, got {classes}")
    notes = []
    pretrained = rec.model.pretrained or rec.model.params.get("pretrained") or rec.model.params.get("imagenet_init")
    if pretrained:
        notes.append(f"random weights: {pretrained} is not loaded (the weights do not change the speed)")
    rec.model.pretrained = None
    rec.model.params = {k: v for k, v in rec.model.params.items() if k not in ("pretrained", "imagenet_init")}
    source = _any_split(rec)
    if classes is not None:
        labels = [f"class_{i}" for i in range(classes)]
    elif source is not None:
        labels = list(source.classes)
    else:
        labels = [f"class_{i}" for i in range(DEFAULT_CLASSES)]
        notes.append(f"{len(labels)} classes (no data at {rec.data.root}; --classes N to change)")
    card = registry.spec(rec.model.arch).card(rec, labels, models.sample_shape(rec, source))
    return Target(str(path), "recipe", card, rec.model.arch, rec, notes=notes)


def _from_onnx(path: Path) -> Target:
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises protobuf's untyped errors for files that are not models
        raise VidcliError(f"{path}: not a loadable ONNX model ({str(exc).splitlines()[0][:200]})") from exc
    card = ModelCard.from_metadata({p.key: p.value for p in proto.metadata_props}, str(path))
    if card.stream is not None:
        raise _stream_error(str(path))
    return Target(str(path), "onnx", card, card.arch or None, onnx=path)


# -- timing -----------------------------------------------------------------------------------------


def model_input(target: Target, batch: int) -> np.ndarray:
    """Random uint8 clips, preprocessed into the model's float32 input; the same for every format."""
    clips = np.random.default_rng(SEED).integers(0, 256, (batch, *target.clip_shape), dtype=np.uint8)
    return target.card.preprocess(clips)


def time_calls(fn: Callable[[], Any], warmup: int, runs_: int, seconds: float | None) -> list[float]:
    """Seconds of each timed call after `warmup` untimed ones: `runs_` calls, or as many as fit in
    `seconds` (at least one)."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    end = time.perf_counter() + seconds if seconds else None
    while (len(times) < runs_) if end is None else (not times or time.perf_counter() < end):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def _stats(times: list[float]) -> dict[str, Any]:
    ms = [t * 1000 for t in times]
    return {"runs": len(ms), "median_ms": round(statistics.median(ms), 4),
            "p90_ms": round(float(np.percentile(ms, 90)), 4), "min_ms": round(min(ms), 4),
            "mean_ms": round(statistics.fmean(ms), 4)}


def _row(fmt: str, batch: int, device: str, times: list[float], diff: float | None) -> dict[str, Any]:
    stats = _stats(times)
    return {"format": fmt, "batch": batch, "device": device, **stats,
            "clips_per_s": round(batch * 1000 / stats["median_ms"], 4),
            "max_abs_diff": None if diff is None else float(diff)}


def _hide_gpus(device: str) -> None:
    """--device cpu: the frameworks see no GPU (only before they start, so checked again after loading)."""
    if device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""


def _check_device(device: str, got: str, what: str) -> None:
    on_gpu = got != "cpu"
    if device == "cuda" and not on_gpu:
        raise VidcliError(f"--device cuda: {what} found no GPU")
    if device == "cpu" and on_gpu:
        raise fail(f"--device cpu: {what} had already started on {got} in this process")


def onnx_session(path: Path, threads: int, device: str):
    """ONNX Runtime on its CUDA provider when asked for or, with `auto`, when the installed build has it."""
    import onnxruntime as ort

    from vidcli.inference import open_session

    available = ort.get_available_providers()
    if device == "cuda" and "CUDAExecutionProvider" not in available:
        raise VidcliError("--device cuda: this onnxruntime has no CUDA provider (install onnxruntime-gpu)")
    providers = ["CPUExecutionProvider"]
    if device != "cpu" and "CUDAExecutionProvider" in available:
        providers.insert(0, "CUDAExecutionProvider")
    session, _ = open_session(path, threads, providers)
    got = "cuda:0" if session.get_providers()[0] == "CUDAExecutionProvider" else "cpu"
    _check_device(device, got, "onnxruntime")
    return session, got


def _untrained_run(target: Target, folder: Path) -> runs.Run:
    from vidcli import models

    rec = target.rec
    run = runs.start(folder, rec, target.classes, target.backend)
    models.write_card(run, target.card)
    log(f"building {rec.model.arch} with random weights ({len(target.classes)} classes, "
        f"input {'x'.join(map(str, target.input_shape))})")
    path = run.file(f"best{registry.SUFFIXES[target.backend]}")
    registry.backend(rec.model.arch).save_untrained(path, rec, len(target.classes), target.clip_shape)
    return run


def _load(run: runs.Run, target: Target):
    backend = registry.backend(target.arch)
    path = backend.checkpoint(run)
    if not path.is_file():
        raise VidcliError(f"{run.path}: no checkpoint ({path.name}); has it been trained?")
    if target.kind == "run":
        log(f"model: {path} (run {run.path})")
    return backend, backend.load(path, target.rec, len(target.classes))


def _export(run: runs.Run, target: Target, x: np.ndarray, folder: Path) -> tuple[Path, np.ndarray]:
    """The export-onnx code path (backend export + model card) into a temporary file; and the framework's
    logits on `x`, the reference ONNX is compared with."""
    from vidcli.exporting import with_metadata

    log(f"exporting to ONNX (opset {target.rec.export.opset}, temporary file)")
    backend, model = _load(run, target)
    model = backend.exported(model)
    raw = backend.export_onnx(model, x, target.rec.export.opset)
    reference = backend.forward(model, target.card)(x)
    path = fsio.write_bytes(folder / "model.onnx", with_metadata(raw, target.card.to_metadata()))
    return path, np.asarray(reference, np.float32)


def benchmark_models(target: Target, formats: list[str], batches: list[int], *, warmup: int = 3, runs_: int = 10,
                     seconds: float | None = None, threads: int = 0, device: str = "auto") -> dict[str, Any]:
    """One row per (format, batch): latency, clips/s and max |logits - framework logits|."""
    device = parse_device(device)
    _hide_gpus(device)
    for note in target.notes:
        log(note)
    x = model_input(target, max(batches))
    rows: list[dict[str, Any]] = []
    onnx_bytes = None
    with tempfile.TemporaryDirectory(prefix="vidcli-benchmark-") as tmp:
        folder = Path(tmp)
        backend = registry.backend(target.arch) if target.rec is not None else None
        if backend is not None and threads:
            backend.set_threads(threads)  # before the framework runs anything (TensorFlow fixes its pools then)
        run = _untrained_run(target, folder) if target.kind == "recipe" else target.run
        reference = None
        if "onnx" in formats:
            path, reference = (target.onnx, None) if run is None else _export(run, target, x, folder)
            onnx_bytes = path.stat().st_size
        for fmt in formats:
            if fmt == "onnx":
                session, dev = onnx_session(path, threads, device)
                name = session.get_inputs()[0].name

                def call(b: int, s=session, n=name) -> np.ndarray:
                    return s.run(None, {n: x[:b]})[0]
            else:
                backend, model = _load(run, target)
                dev = backend.device_of(model)
                _check_device(device, dev, fmt)
                forward = backend.forward(model, target.card)

                def call(b: int, f=forward) -> np.ndarray:
                    return f(x[:b])
            for b in batches:
                log(f"timing {fmt}, batch {b} on {dev}")
                out = call(b)
                diff = 0.0 if fmt != "onnx" else (None if reference is None else _max_diff(out, reference[:b]))
                rows.append(_row(fmt, b, dev, time_calls(lambda b=b: call(b), warmup, runs_, seconds), diff))
    return {
        "mode": "model",
        "model": {"source": target.source, "kind": target.kind, "arch": target.arch, "backend": target.backend,
                  "classes": len(target.classes), "clip_shape": list(target.clip_shape),
                  "input_shape": list(target.input_shape), "layout": target.card.layout, "onnx_bytes": onnx_bytes,
                  "tolerance": target.rec.export.tolerance if target.rec else None},
        "settings": {"formats": formats, "batches": batches, "warmup": warmup, "runs": None if seconds else runs_,
                     "seconds": seconds, "threads": threads, "device": device,
                     "input": f"uniform random uint8 frames, preprocessed (seed {SEED})"},
        "machine": machine(),
        "rows": rows,
    }


def _max_diff(out: np.ndarray, reference: np.ndarray) -> float:
    out = np.asarray(out, np.float32)
    if out.shape != reference.shape:
        raise fail(f"ONNX output shape {out.shape} differs from the framework's {reference.shape}")
    return float(np.abs(out - reference).max())


# -- input pipeline ---------------------------------------------------------------------------------


CACHE_MODES = ("both", "on", "off")


def _cpu_seconds() -> float:
    """CPU of this process and of its finished children (DataLoader workers end with their epoch)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _epoch(backend, source, batch: int, workers: int, seed: int) -> tuple[float, float, int]:
    """One whole epoch from a fresh pipeline, as training starts each epoch: (seconds, CPU seconds, clips)."""
    steps = -(-len(source) // batch)
    t0, c0 = time.perf_counter(), _cpu_seconds()
    gen = backend.pipeline_batches(source, batch, workers, seed)
    clips = 0
    try:
        for _ in range(steps):
            clips += next(gen)
    finally:
        gen.close()
    return time.perf_counter() - t0, _cpu_seconds() - c0, clips


def _epoch_row(pipeline: str, batch: int, workers: int, cache: str, which: str, runs: list[tuple]) -> dict:
    """`which`: cold (the first epoch) or warm (the median of the others)."""
    seconds = statistics.median(r[0] for r in runs)
    clips = runs[0][2]
    cpu = statistics.median(r[1] for r in runs)
    return {"pipeline": pipeline, "batch": batch, "workers": workers, "cache": cache, "epoch": which,
            "runs": len(runs), "clips": clips, "seconds": round(seconds, 4),
            "clips_per_s": round(clips / seconds, 4) if seconds > 0 else None,
            "cpu_ms_per_clip": round(1000 * cpu / clips, 3) if clips else None}


def benchmark_data(target: Target, batches: list[int] | None = None, *, epochs: int = 3, cache: str = "both",
                   cache_dir: Path | None = None, workers: int | None = None) -> dict[str, Any]:
    """Whole epochs of the backend's training input pipeline (decoding, sampling, augmentation, batching)
    on the train split, without the model: the rate training can at most be fed at. Each epoch starts a
    fresh pipeline, as training does; the first is cold, the rest warm. With the decoded-frame cache on,
    the first epoch fills an empty cache (a temporary folder unless `cache_dir`) and later ones read it."""
    from vidcli.datasets.source import open_source

    if target.rec is None:
        raise VidcliError(f"--data times a run's or recipe's data; {target.source} is an .onnx file")
    if epochs < 1:
        raise VidcliError(f"--epochs: must be at least 1, got {epochs}")
    if cache not in CACHE_MODES:
        raise VidcliError(f"--cache: expected one of {', '.join(CACHE_MODES)}, got {cache!r}")
    rec = target.rec
    root = Path(rec.data.root)
    if not root.exists():
        raise VidcliError(f"data.root: {root} not found (fetch or generate it with `vidcli data ...`)")
    if workers is not None and workers < 0:
        raise VidcliError(f"--workers: must be 0 or more, got {workers}")
    classes = target.classes if target.kind == "run" else None
    modes = ["off", "on"] if cache == "both" else [cache]
    if "on" in modes and rec.data.format != "videos":
        raise VidcliError(f"--cache on: the frame cache holds decoded videos; data.format is {rec.data.format}")
    backend = registry.backend(rec.model.arch)
    workers = rec.data.workers if workers is None else workers
    pipeline = PIPELINES[target.backend]
    rows: list[dict[str, Any]] = []
    caches: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="vidcli-frame-cache-") as tmp:
        for mode in modes:
            data = dataclasses.replace(rec.data, cache=mode == "on",
                                       cache_dir=str(cache_dir or Path(tmp) / "cache") if mode == "on" else None)
            source = open_source(data, "train", classes)
            for b in batches or [rec.train.batch_size]:
                log(f"timing {epochs} epoch(s) of the {pipeline} training pipeline, batch {b}, workers {workers}, "
                    f"frame cache {mode}")
                runs = [_epoch(backend, source, b, workers, rec.train.seed + e) for e in range(epochs)]
                rows.append(_epoch_row(pipeline, b, workers, mode, "cold", runs[:1]))
                if epochs > 1:
                    rows.append(_epoch_row(pipeline, b, workers, mode, "warm", runs[1:]))
            if source.cache is not None:
                caches = {"folder": str(source.cache.root), "temporary": cache_dir is None,
                          "bytes": sum(f.stat().st_size for f in source.cache.base.rglob("*.frames")),
                          "writable": source.cache.writable}
    return {
        "mode": "data",
        "data": {"source": target.source, "root": str(root), "format": rec.data.format, "split": "train",
                 "clips": len(source), "clip_shape": list(source.sample_shape), "pipeline": pipeline,
                 "sampling": rec.data.sampling, "cache": caches or None},
        "settings": {"batches": list(dict.fromkeys(r["batch"] for r in rows)), "epochs": epochs, "cache": cache,
                     "workers": workers},
        "machine": machine(),
        "rows": rows,
    }


def machine() -> dict[str, Any]:
    """What the numbers were measured on; the load average matters on a shared machine."""
    from importlib import metadata

    versions = {"vidcli": __version__}
    for pkg in ("numpy", "onnxruntime", "tensorflow", "keras", "torch"):
        if pkg in ("tensorflow", "keras", "torch") and pkg not in sys.modules:
            continue
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            continue
    try:
        load = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        load = None
    return {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count(),
            "loadavg": load, "gpus": runs.gpus(), "versions": versions}
