"""Standard evaluation and training plots written as PNG files.

Figures are built as bare `Figure` objects on an Agg canvas, never through pyplot's global figure
list, so repeated calls in a long evaluation leak nothing and need no display. Sizes are fixed by
the inputs (no tight bounding box), so the same data always gives the same image size.
"""

from __future__ import annotations

import csv
import math
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

if "matplotlib.pyplot" not in sys.modules:
    matplotlib.use("Agg")

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from vidcli import fsio, metrics
from vidcli.errors import VidcliError

DPI = 100
ANNOTATE_MAX_CLASSES = 30
LEGEND_MAX_CLASSES = 20
_VAL_PREFIXES = ("val_", "validation_")
_TRAIN_PREFIXES = ("train_",)
_BOOKKEEPING = frozenset({"seconds", "time", "elapsed", "timestamp", "wall_time"})


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | os.PathLike) -> Path:
    try:
        with fsio.atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp, format="png", dpi=DPI)
    finally:
        fig.clear()
    return Path(path)


def _names(class_names: Sequence[str], num_classes: int) -> list[str]:
    names = [str(n) for n in class_names]
    if len(names) != num_classes:
        raise VidcliError(f"got {len(names)} class names for {num_classes} classes")
    return names


def _row_normalize(cm: np.ndarray) -> np.ndarray:
    rows = cm.sum(axis=1, keepdims=True)
    out = np.zeros(cm.shape, dtype=np.float64)
    np.divide(cm, rows, out=out, where=rows > 0)
    return out


def confusion_heatmap(
    cm: np.ndarray,
    class_names: Sequence[str],
    path: str | os.PathLike,
    *,
    normalize: bool = False,
    title: str | None = None,
) -> Path:
    """Heatmap with true classes down and predictions across; grows with the class count.

    Cell text is drawn only up to `ANNOTATE_MAX_CLASSES` classes, beyond which it cannot be read.
    Normalising divides each row by its support; a class with no samples stays an all-zero row.
    """
    import seaborn as sns

    try:
        m = np.asarray(cm, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise VidcliError(f"confusion matrix must be numeric: {exc}") from exc
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] == 0:
        raise VidcliError(f"confusion matrix must be square and non-empty, got shape {m.shape}")
    if not np.isfinite(m).all() or (m < 0).any():
        raise VidcliError("confusion matrix must hold finite, non-negative counts")
    c = m.shape[0]
    names = _names(class_names, c)
    if normalize:
        m = _row_normalize(m)
    integral = not normalize and bool((m == np.round(m)).all())

    side = min(max(6.0, 2.5 + 0.32 * c), 40.0)
    fig = _new_figure(side + 1.5, side)
    ax = fig.add_subplot()
    tick_size = 10 if c <= 20 else 7
    annotate = c <= ANNOTATE_MAX_CLASSES
    sns.heatmap(
        m.astype(np.int64) if integral else m,
        ax=ax,
        cmap="Blues",
        vmin=0.0,
        vmax=1.0 if normalize else None,
        square=True,
        annot=annotate,
        fmt="d" if integral else ".2f",
        annot_kws={"fontsize": max(5.0, min(10.0, 180.0 / c))},
        xticklabels=False,
        yticklabels=False,
        linewidths=0.5 if c <= ANNOTATE_MAX_CLASSES else 0.0,
        linecolor="white",
        cbar_kws={
            "shrink": 0.8 if c <= ANNOTATE_MAX_CLASSES else 0.4,
            "label": "fraction of true class" if normalize else "samples",
        },
    )
    longest = max(len(n) for n in names)
    rotation = 0 if longest <= 3 and c <= 20 else (45 if c <= 12 else 90)
    ticks = np.arange(c) + 0.5
    ax.set_xticks(ticks)
    ax.set_yticks(ticks)
    ax.set_xticklabels(
        names,
        rotation=rotation,
        ha="right" if rotation == 45 else "center",
        rotation_mode="anchor" if rotation == 45 else "default",
        fontsize=tick_size,
    )
    ax.set_yticklabels(names, rotation=0, fontsize=tick_size)
    label_size = 10 + side / 3
    ax.set_xlabel("Predicted class", fontsize=label_size)
    ax.set_ylabel("True class", fontsize=label_size)
    default = "Confusion matrix (row-normalised)" if normalize else "Confusion matrix"
    ax.set_title(title or default, fontsize=label_size + 2)
    return _save(fig, path)


def _class_colors(c: int) -> list[Any]:
    cmaps = matplotlib.colormaps
    if c <= 10:
        return [cmaps["tab10"](i) for i in range(c)]
    if c <= 20:
        return [cmaps["tab20"](i) for i in range(c)]
    return [cmaps["turbo"](i / max(c - 1, 1)) for i in range(c)]


def pr_curves(labels: np.ndarray, probs: np.ndarray, class_names: Sequence[str], path: str | os.PathLike) -> Path:
    """One-vs-rest precision-recall curve per class plus the micro average over all decisions.

    Per-class legend entries (with AP) appear only up to `LEGEND_MAX_CLASSES`; classes with no
    true samples have no curve, and the title reports the macro AP over the classes that do.
    """
    p, y = metrics.check_scores(probs, labels, "probs")
    c = p.shape[1]
    names = _names(class_names, c)
    onehot = y[:, None] == np.arange(c)[None, :]
    show_legend = c <= LEGEND_MAX_CLASSES
    fig = _new_figure(10.5 if show_legend else 8.0, 6.5)
    ax = fig.add_subplot()
    aps = []
    for i, color in enumerate(_class_colors(c)):
        if not onehot[:, i].any():
            continue
        precision, recall, _ = metrics.pr_curve(onehot[:, i], p[:, i])
        ap = metrics.average_precision(onehot[:, i], p[:, i])
        aps.append(ap)
        label = f"{names[i]} (AP {ap:.3f})" if show_legend else None
        ax.plot(
            recall,
            precision,
            drawstyle="steps-post",
            color=color,
            lw=1.5 if show_legend else 0.8,
            alpha=0.9 if show_legend else 0.45,
            label=label,
        )
    precision, recall, _ = metrics.pr_curve(onehot.ravel(), p.ravel())
    micro = metrics.average_precision(onehot.ravel(), p.ravel())
    ax.plot(
        recall,
        precision,
        drawstyle="steps-post",
        color="black",
        lw=2.5,
        ls="--",
        zorder=3,
        label=f"micro-average (AP {micro:.3f})",
    )
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 1.02)
    ax.set_xlabel("Recall")
    ax.set_ylabel("Precision")
    ax.grid(alpha=0.3)
    skipped = c - len(aps)
    note = f", {skipped} without samples" if skipped else ""
    ax.set_title(f"Precision-recall, one vs rest: macro AP {np.mean(aps):.3f} over {len(aps)} classes{note}")
    if show_legend:
        ax.legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8, frameon=False)
    else:
        ax.legend(loc="lower left", fontsize=9)
    return _save(fig, path)


def _parse_cell(text: str, where: str) -> float:
    text = text.strip()
    if text == "":
        return math.nan
    try:
        return float(text)
    except ValueError as exc:
        raise VidcliError(f"{where}: {text!r} is not a number") from exc


def _read_history_csv(path: Path) -> dict[str, list[float]]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            fields = [f.strip() for f in reader.fieldnames or []]
            rows = [list(r.values()) for r in reader]
    except FileNotFoundError as exc:
        raise VidcliError(f"{path}: file not found") from exc
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise VidcliError(f"{path}: not a readable CSV file ({exc})") from exc
    if "epoch" not in fields:
        raise VidcliError(f"{path}: no 'epoch' column (columns: {', '.join(fields) or 'none'})")
    if not rows:
        raise VidcliError(f"{path}: no rows of training history")
    history: dict[str, list[float]] = {}
    for col, key in enumerate(fields):
        raw = [(r[col] if col < len(r) and isinstance(r[col], str) else "") for r in rows]
        if key != "epoch" and not any(_is_number(v) for v in raw):
            continue
        history[key] = [_parse_cell(v, f"{path}: row {i + 2}, column {key!r}") for i, v in enumerate(raw)]
    return history


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _history_arrays(history: Mapping[str, Sequence[float]]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    series: dict[str, np.ndarray] = {}
    for key, values in history.items():
        try:
            series[str(key)] = np.array([math.nan if v is None else v for v in values], dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise VidcliError(f"history key {key!r}: values must be numbers ({exc})") from exc
    epochs = series.pop("epoch", None)
    if not series:
        raise VidcliError("training history has no metric besides 'epoch'")
    lengths = {k: v.size for k, v in series.items()}
    n = max(lengths.values())
    if n == 0:
        raise VidcliError("training history is empty")
    if epochs is None:
        epochs = np.arange(1, n + 1, dtype=np.float64)
    for key, size in lengths.items():
        if size != epochs.size:
            raise VidcliError(f"history key {key!r} has {size} values for {epochs.size} epochs")
    return epochs, series


def _split_key(key: str) -> tuple[str, str]:
    for prefix in _VAL_PREFIXES:
        if key.startswith(prefix):
            return key[len(prefix) :], "val"
    for prefix in _TRAIN_PREFIXES:
        if key.startswith(prefix):
            return key[len(prefix) :], "train"
    return key, "train"


def _family_order(family: str) -> int:
    if "loss" in family:
        return 0
    return 1 if "acc" in family or "top" in family else 2


def training_curves(history: Mapping[str, Sequence[float]] | str | os.PathLike, path: str | os.PathLike) -> Path:
    """Train and validation curves against epoch, one panel per metric family (loss, accuracy, lr, ...).

    `history` is a Keras-style dict (`loss`, `val_loss`, ...) or a CSV with an `epoch` column;
    empty cells are gaps, so metrics logged on some epochs only still plot. Timing columns such as
    `seconds` are bookkeeping, not learning progress, and are left out.
    """
    if isinstance(history, (str, os.PathLike)):
        history = _read_history_csv(Path(history))
    elif not isinstance(history, Mapping):
        raise VidcliError(f"training history must be a dict or a CSV path, got {type(history).__name__}")
    epochs, series = _history_arrays(history)
    families: dict[str, list[tuple[str, str]]] = {}
    for key in series:
        if key in _BOOKKEEPING:
            continue
        family, split = _split_key(key)
        families.setdefault(family, []).append((split, key))
    if not families:
        raise VidcliError(f"training history has no metric to plot (keys: {', '.join(series)})")
    ordered = sorted(families, key=_family_order)
    ncols = min(len(ordered), 3)
    nrows = math.ceil(len(ordered) / ncols)
    fig = _new_figure(4.8 * ncols, 3.6 * nrows)
    marker = "o" if epochs.size <= 40 else None
    for idx, family in enumerate(ordered):
        ax = fig.add_subplot(nrows, ncols, idx + 1)
        for split, key in sorted(families[family]):
            values = series[key]
            keep = np.isfinite(values)
            ax.plot(
                epochs[keep],
                values[keep],
                marker=marker,
                ms=3,
                label=split,
                color="tab:blue" if split == "train" else "tab:orange",
            )
        positive = np.concatenate([series[k] for _, k in families[family]])
        positive = positive[np.isfinite(positive)]
        if family in ("lr", "learning_rate") and positive.size and (positive > 0).all():
            ax.set_yscale("log")
        ax.set_title(family)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if len(families[family]) > 1:
            ax.legend(fontsize=8)
    return _save(fig, path)
