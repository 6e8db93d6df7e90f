"""Predictions on a split, cached in the run folder, and the metrics/plots derived from them.

`eval`, `confusion` and `precision-recall` share one cache per split, keyed by the checkpoint it
came from, so the model runs once and a retrained run never shows stale numbers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vidcli import fsio
from vidcli.backends import registry
from vidcli.datasets.source import open_source
from vidcli.errors import VidcliError
from vidcli.runs import Run


def _checkpoint(run: Run) -> Path:
    for name in ("best.keras", "best.pt", "last.keras", "last.pt"):
        if run.file(name).is_file():
            return run.file(name)
    raise VidcliError(f"{run.path}: no checkpoint; has it been trained?")


def predictions(run: Run, split: str, batch_size: int | None = None, workers: int = 0, clips: int = 1,
                crops: int = 1) -> dict:
    """`clips` x `crops` > 1: test-time views averaged per video (data.sampling segments/dense only)."""
    rec = run.recipe
    views = {} if (clips, crops) == (1, 1) else {"clips": clips, "crops": crops}
    if views and rec.data.sampling == "step":
        raise VidcliError("--clips/--crops need data.sampling: segments or dense in the run's recipe")
    labels = run.labels
    ckpt = _checkpoint(run)
    st = ckpt.stat()
    key = f"{ckpt.name}:{st.st_mtime_ns}:{st.st_size}:{Path(rec.data.root).resolve()}:{split}"
    key += f":{clips}x{crops}" if views else ""
    cache = run.file("predictions") / (f"{split}.npz" if not views else f"{split}_{clips}x{crops}.npz")
    if cache.is_file():
        with np.load(cache, allow_pickle=False) as z:
            if str(z["key"]) == key:
                return {k: z[k] for k in ("logits", "labels", "sources")} | {"classes": labels, "cached": True}
    source = open_source(rec.data, split, labels)
    backend = registry.backend(rec.model.arch)
    model = backend.load_for_run(run)
    logits = backend.predict_source(model, source, batch_size or rec.train.batch_size, workers or rec.data.workers,
                                    **views)
    sources = np.asarray([source.name(i) for i in range(len(source))])
    with fsio.atomic_path(cache, suffix=".npz") as tmp:
        np.savez(tmp, logits=logits, labels=source.labels, sources=sources, key=np.asarray(key))
    return {"logits": logits, "labels": source.labels, "sources": sources, "classes": labels, "cached": False}


def evaluate(run: Run, split: str, **kw) -> dict:
    from vidcli import metrics

    pred = predictions(run, split, **kw)
    summary = metrics.summarize(pred["logits"], pred["labels"], pred["classes"])
    summary = {"run": str(run.path), "split": split, **summary}
    path = run.file("metrics.json")
    existing = fsio.read_json(path) if path.is_file() else {}
    existing[split] = summary
    fsio.write_json(path, existing)
    return summary


def confusion(run: Run, split: str, **kw) -> dict:
    from vidcli import metrics, plots

    pred = predictions(run, split, **kw)
    classes = pred["classes"]
    cm = metrics.confusion_matrix(pred["labels"], pred["logits"].argmax(1), len(classes))
    csv = "," + ",".join(classes) + "\n" + "".join(
        f"{name}," + ",".join(str(int(v)) for v in row) + "\n" for name, row in zip(classes, cm, strict=True))
    out = {
        "csv": fsio.write_text(run.file(f"confusion_{split}.csv"), csv),
        "png": plots.confusion_heatmap(cm, classes, run.file(f"confusion_{split}.png"), title=f"{split}: counts"),
        "png_normalized": plots.confusion_heatmap(cm, classes, run.file(f"confusion_{split}_normalized.png"),
                                                  normalize=True, title=f"{split}: row-normalised"),
    }
    return {"matrix": cm.tolist(), "classes": classes, **{k: str(v) for k, v in out.items()}}


def precision_recall(run: Run, split: str, **kw) -> dict:
    from vidcli import metrics, plots

    pred = predictions(run, split, **kw)
    rows = metrics.per_class_report(pred["logits"], pred["labels"], pred["classes"])
    keys = list(rows[0].keys())
    csv = ",".join(keys) + "\n" + "".join(",".join(str(r[k]) for k in keys) + "\n" for r in rows)
    fsio.write_text(run.file(f"precision_recall_{split}.csv"), csv)
    fsio.write_json(run.file(f"precision_recall_{split}.json"), rows)
    probs = metrics.softmax(pred["logits"])
    png = plots.pr_curves(pred["labels"], probs, pred["classes"], run.file(f"pr_curves_{split}.png"))
    return {"rows": rows, "csv": str(run.file(f"precision_recall_{split}.csv")), "png": str(png)}
