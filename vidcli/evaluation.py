"""Predictions on a split, cached, and the metrics and plots derived from them, for any model: a run's
checkpoint (best by default, or last), a checkpoint file, or an exported ONNX file.

`eval`, `confusion` and `precision-recall` share one cache per (model, split, views), keyed by the model
file and the data, so the model runs once and a retrained run never shows stale numbers. Every model is scored
by the same loop (`vidcli.scoring`), so an ONNX export and its checkpoint give the same top-1 on the same split.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vidcli import fsio, models
from vidcli import recipe as recipe_mod
from vidcli.console import log, warn
from vidcli.errors import VidcliError


@dataclass
class Target:
    """What is evaluated, on which data, and where its outputs go."""

    choice: models.Choice
    data: recipe_mod.DataConfig
    out: Path  # metrics.json, plots, CSVs and the predictions cache
    tag: str  # "" for a run's best checkpoint; else what tells this model apart ("last", "model.onnx", ...)
    batch_size: int

    def name(self, stem: str, split: str, views: tuple[int, int]) -> str:
        """File stem / metrics key for `split`: `test`, `test_last`, `test_model.onnx_2x3` ..."""
        parts = [stem, split] if stem else [split]
        parts += [self.tag] if self.tag else []
        parts += [f"{views[0]}x{views[1]}"] if views != (1, 1) else []
        return "_".join(parts)


def target(path: Path, checkpoint: str | None = None, data_root: Path | None = None) -> Target:
    """`path`: a run folder (its `checkpoint`, default best), a checkpoint file or an .onnx file."""
    if checkpoint is not None and checkpoint not in ("best", "last"):
        raise VidcliError(f"--checkpoint must be best or last, got {checkpoint!r}")
    if path.is_dir():
        choice = models.resolve(path, checkpoint=checkpoint or "best")
    else:
        choice = models.resolve(path, checkpoint=checkpoint)
    run = choice.run
    if run is not None:
        rec = run.recipe
        data = copy.deepcopy(rec.data)
        batch = rec.train.batch_size
    else:
        if data_root is None:
            raise VidcliError(f"{path}: give --data ROOT (a model file outside a run folder has no data of its own)")
        card = choice.card
        data = recipe_mod.DataConfig(root=str(data_root), format=card.input_kind, frames=card.frames,
                                     frame_step=card.frame_step, size=tuple(card.size),
                                     sampling="step" if card.sampling == "center" else card.sampling)
        batch = 8
    if data_root is not None:
        data.root = str(data_root)
        data.synth = None
    tag = choice.path.name if choice.kind == "onnx" else "" if choice.path.stem == "best" else choice.path.stem
    out = run.path if run is not None else choice.path.with_name(choice.path.name + ".eval")
    return Target(choice, data, out, tag, batch)


def predictions(t: Target, split: str, batch_size: int | None = None, workers: int = 0, clips: int = 1,
                crops: int = 1) -> dict:
    """Logits of `split` (cached), with the labels, the clip names and what produced them. `t` may also be a
    run folder (`Run`): its best checkpoint."""
    from vidcli.datasets.source import open_source, view_problem

    t = t if isinstance(t, Target) else target(Path(t.path))

    problem = view_problem(t.data.format, "step" if t.data.format == "volumes" else t.data.sampling, clips, crops)
    if problem:
        raise VidcliError(problem)
    if batch_size is not None and batch_size < 1:
        raise VidcliError(f"--batch-size must be >= 1, got {batch_size}")
    labels = t.choice.card.labels
    source = open_source(t.data, split, labels)
    _warn_if_data_changed(t, split)
    from vidcli.datasets import provenance

    st = t.choice.path.stat()
    files = provenance.fingerprint(t.data, labels).get("splits", {}).get(split, {}).get("sha256", "")
    key = (f"{t.choice.path.resolve()}:{st.st_mtime_ns}:{st.st_size}:{Path(t.data.root).resolve()}:{files}:{split}:"
           f"{clips}x{crops}")
    cache = t.out / "predictions" / f"{t.name('', split, (clips, crops))}.npz"
    info = {"model": str(t.choice.path), "checkpoint": t.choice.path.name if t.choice.kind == "checkpoint" else
            t.choice.card.extra.get("checkpoint"), "clips": clips, "crops": crops, "data": str(t.data.root)}
    if cache.is_file():
        try:
            with np.load(cache, allow_pickle=False) as z:
                if str(z["key"]) == key:
                    return {k: z[k] for k in ("logits", "labels", "sources")} | {"classes": labels, "cached": True,
                                                                                  **info}
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache is recomputed
    from vidcli.scoring import score

    model = models.open_model(t.choice)
    models.announce(t.choice)
    logits = score(model, t.choice.card, source, batch_size or t.batch_size, workers or t.data.workers, clips, crops)
    sources = np.asarray([source.name(i) for i in range(len(source))])
    with fsio.atomic_path(cache, suffix=".npz") as tmp:
        np.savez(tmp, logits=logits, labels=source.labels, sources=sources, key=np.asarray(key))
    return {"logits": logits, "labels": source.labels, "sources": sources, "classes": labels, "cached": False, **info}


def _warn_if_data_changed(t: Target, split: str) -> None:
    run = t.choice.run
    if run is None:
        return
    then = run.state.get("data")
    if not then or Path(then.get("root", "")) != Path(t.data.root).resolve():
        return
    from vidcli.datasets import provenance

    found = provenance.changes(then, provenance.fingerprint(t.data, t.choice.card.labels), split)
    if found:
        warn(f"the data at {t.data.root} changed since {run.path} trained ({'; '.join(found)})")


def evaluate(t: Target, split: str, **kw: Any) -> dict:
    from vidcli import metrics

    t = t if isinstance(t, Target) else target(Path(t.path))
    pred = predictions(t, split, **kw)
    summary = metrics.summarize(pred["logits"], pred["labels"], pred["classes"])
    summary = {"run": str(t.choice.run.path) if t.choice.run else None, "split": split, "model": pred["model"],
               "checkpoint": pred["checkpoint"], "clips": pred["clips"], "crops": pred["crops"],
               "data": pred["data"], **summary}
    path = t.out / "metrics.json"
    existing = fsio.read_json(path) if path.is_file() else {}
    existing[t.name("", split, (pred["clips"], pred["crops"]))] = summary
    fsio.write_json(path, existing)
    log(f"metrics written to {path}")
    return summary


def confusion(t: Target, split: str, **kw: Any) -> dict:
    from vidcli import metrics, plots

    t = t if isinstance(t, Target) else target(Path(t.path))
    pred = predictions(t, split, **kw)
    classes = pred["classes"]
    cm = metrics.confusion_matrix(pred["labels"], pred["logits"].argmax(1), len(classes))
    csv = "," + ",".join(classes) + "\n" + "".join(
        f"{name}," + ",".join(str(int(v)) for v in row) + "\n" for name, row in zip(classes, cm, strict=True))
    stem = t.name("confusion", split, (pred["clips"], pred["crops"]))
    out = {
        "csv": fsio.write_text(t.out / f"{stem}.csv", csv),
        "png": plots.confusion_heatmap(cm, classes, t.out / f"{stem}.png", title=f"{split}: counts"),
        "png_normalized": plots.confusion_heatmap(cm, classes, t.out / f"{stem}_normalized.png",
                                                  normalize=True, title=f"{split}: row-normalised"),
    }
    _tensorboard(t, {f"confusion/{stem}": out["png_normalized"]})
    return {"matrix": cm.tolist(), "classes": classes, "model": pred["model"], **{k: str(v) for k, v in out.items()}}


def precision_recall(t: Target, split: str, **kw: Any) -> dict:
    from vidcli import metrics, plots

    t = t if isinstance(t, Target) else target(Path(t.path))
    pred = predictions(t, split, **kw)
    rows = metrics.per_class_report(pred["logits"], pred["labels"], pred["classes"])
    keys = list(rows[0].keys())
    csv = ",".join(keys) + "\n" + "".join(",".join(str(r[k]) for k in keys) + "\n" for r in rows)
    stem = t.name("precision_recall", split, (pred["clips"], pred["crops"]))
    fsio.write_text(t.out / f"{stem}.csv", csv)
    fsio.write_json(t.out / f"{stem}.json", rows)
    probs = metrics.softmax(pred["logits"])
    png_name = t.name("pr_curves", split, (pred["clips"], pred["crops"]))
    png = plots.pr_curves(pred["labels"], probs, pred["classes"], t.out / f"{png_name}.png")
    _tensorboard(t, {f"pr_curves/{png_name}": png})
    return {"rows": rows, "csv": str(t.out / f"{stem}.csv"), "png": str(png), "model": pred["model"]}


def _tensorboard(t: Target, images: dict[str, Path]) -> None:
    """A run that logs to TensorBoard also gets its evaluations' plots there, at its last epoch."""
    run = t.choice.run
    if run is None or not run.recipe.train.tensorboard:
        return
    from vidcli.tensorboard import log_images

    log_images(run.file("tensorboard"), int(run.state.get("epochs_done") or 0), images)
