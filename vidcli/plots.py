"""Standard evaluation and training plots written as PNG files.

Figures are built as bare `Figure` objects on an Agg canvas, never through pyplot's global figure
list, so repeated calls in a long evaluation leak nothing and need no display. Sizes are fixed by
the inputs (no tight bounding box) and bounded, so the same data always gives the same image size
and 400 classes give a file one can still open.
"""

from __future__ import annotations

import csv
import math
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

if "matplotlib.pyplot" not in sys.modules:
    matplotlib.use("Agg")

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import PowerNorm
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from vidcli import fsio, metrics
from vidcli.errors import VidcliError

DPI = 100
ANNOTATE_MAX_CLASSES = 30
ALL_CURVES_MAX_CLASSES = 12  # beyond this, PR curves show the best and worst EXTREMES and a band for the rest
EXTREMES = 5
MATRIX_MAX_INCHES = 16.0
TICK_PITCH_PT = 8.0  # the least distance between two tick labels; denser labels are thinned
NAME_MAX_CHARS = 32
_COLORS = [matplotlib.colormaps["tab10"](i) for i in range(10)]
_MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h", "p"]
_LINESTYLES = ["-", "--", "-.", ":"]
_VAL_PREFIXES = ("val_", "validation_")
_TRAIN_PREFIXES = ("train_",)
_BOOKKEEPING = frozenset({"seconds", "time", "elapsed", "timestamp", "wall_time"})
_LR_KEYS = ("lr", "learning_rate")
_BEST_FROM = ("val_accuracy", "accuracy", "val_loss", "loss")
_BEST_COLOR = "tab:green"


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
    return [n if len(n) <= NAME_MAX_CHARS else n[: NAME_MAX_CHARS - 1] + "…" for n in names]


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
    """Heatmap with true classes down and predictions across (see `heatmap_figure`)."""
    return _save(heatmap_figure(cm, class_names, normalize=normalize, title=title), path)


def heatmap_figure(cm: np.ndarray, class_names: Sequence[str], *, normalize: bool = False,
                   title: str | None = None) -> Figure:
    """The matrix grows with the class count up to `MATRIX_MAX_INCHES`; past that, tick labels are thinned
    to every k-th class so none overlap. The colour scale is a square root: next to a 0.9 diagonal, a 2 %
    confusion would be white on a linear scale, and where the errors go is what a large matrix is read for.
    Cell text is drawn only up to `ANNOTATE_MAX_CLASSES`, and only in non-zero cells.
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

    side = min(max(4.5, 0.32 * c), MATRIX_MAX_INCHES)
    cell_pt = side * 72 / c
    every = math.ceil(TICK_PITCH_PT / cell_pt)
    tick_size = min(10.0, 0.85 * every * cell_pt)
    rotation = 0 if c <= 12 and max(map(len, names)) <= 4 else (45 if c <= 12 else 90)
    label_in = max(map(len, names)) * tick_size * 0.62 / 72
    fig = _new_figure(side + label_in + 2.2, side + label_in * (rotation != 0) * 0.8 + 1.4)
    ax = fig.add_subplot()
    text = None
    if c <= ANNOTATE_MAX_CLASSES:
        text = np.array([[format(v, "d" if integral else ".2f") if v else "" for v in row]
                         for row in (m.astype(np.int64) if integral else m)])
    sns.heatmap(
        m,
        ax=ax,
        cmap="Blues",
        norm=PowerNorm(0.5, vmin=0.0, vmax=1.0 if normalize else max(float(m.max()), 1.0)),
        square=True,
        annot=text if text is not None else False,
        fmt="",
        annot_kws={"fontsize": min(10.0, cell_pt / 2.8)},
        xticklabels=False,
        yticklabels=False,
        linewidths=0.5 if c <= ANNOTATE_MAX_CLASSES else 0.0,
        linecolor="white",
        cbar_kws={"shrink": 0.6, "label": ("fraction of true class" if normalize else "samples") + " (√ scale)"},
    )
    shown = np.arange(0, c, every)
    ax.set_xticks(shown + 0.5)
    ax.set_yticks(shown + 0.5)
    ax.set_xticklabels([names[i] for i in shown], rotation=rotation, fontsize=tick_size,
                       ha="right" if rotation == 45 else "center",
                       rotation_mode="anchor" if rotation == 45 else "default")
    ax.set_yticklabels([names[i] for i in shown], rotation=0, fontsize=tick_size)
    ax.tick_params(length=2 if every == 1 else 4)
    thinned = f" (1 in {every} labelled)" if every > 1 else ""
    ax.set_xlabel(f"Predicted class{thinned}", fontsize=12)
    ax.set_ylabel("True class", fontsize=12)
    default = "Confusion matrix (row-normalised)" if normalize else "Confusion matrix"
    ax.set_title(f"{title or default} ({c} classes)", fontsize=14)
    return fig


def _ap(precision: np.ndarray, recall: np.ndarray) -> float:
    """`metrics.average_precision` from a curve already computed (the micro curve at 400 classes takes seconds)."""
    return float(max(0.0, -np.sum(np.diff(recall) * precision[:-1])))


def _drawn(precision: np.ndarray, recall: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The curve as `_ap` integrates it: the last step reaches recall 0 at the first threshold's precision, not
    at the conventional precision 1, whose vertical jump at recall 0 is no operating point."""
    return np.r_[precision[:-1], precision[-2:-1]], recall


def _precision_at(precision: np.ndarray, recall: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """The step curve that `average_precision` integrates, read at each recall in `grid`: its mean over a
    fine grid is the class's AP, so the median and band over classes summarise the same number."""
    increasing = recall[::-1]
    return precision[::-1][np.searchsorted(increasing, grid, side="left").clip(max=increasing.size - 1)]


def pr_curves(labels: np.ndarray, probs: np.ndarray, class_names: Sequence[str], path: str | os.PathLike) -> Path:
    """One-vs-rest precision-recall curves (see `pr_figure`)."""
    return _save(pr_figure(labels, probs, class_names), path)


def pr_figure(labels: np.ndarray, probs: np.ndarray, class_names: Sequence[str]) -> Figure:
    """Up to `ALL_CURVES_MAX_CLASSES` classes every curve is drawn; beyond, the `EXTREMES` best and worst by
    AP are, and every class enters a median curve and a band from its 10th to 90th percentile, so 400 classes
    read like 10.

    A perfect class runs along precision 1 and recall 1: the axes reach past [0, 1] and curves sit above
    the frame, so it is never hidden under a spine. Classes with no true samples have no curve and no AP.
    """
    p, y = metrics.check_scores(probs, labels, "probs")
    c = p.shape[1]
    names = _names(class_names, c)
    onehot = y[:, None] == np.arange(c)[None, :]
    support = onehot.sum(axis=0)
    present = [int(i) for i in np.flatnonzero(support)]
    curves = {i: _drawn(*metrics.pr_curve(onehot[:, i], p[:, i])[:2]) for i in present}
    ap = {i: _ap(*curves[i]) for i in present}
    ranked = sorted(present, key=lambda i: (-ap[i], -support[i], i))
    few = len(ranked) <= ALL_CURVES_MAX_CLASSES
    shown = ranked if few else ranked[:EXTREMES] + ranked[-EXTREMES:]

    fig = _new_figure(11.0, 6.5)
    ax = fig.add_subplot()
    if not few:
        grid = np.linspace(0.0, 1.0, 401)
        stack = np.array([_precision_at(*curves[i], grid) for i in present])
        low, median, high = np.percentile(stack, [10, 50, 90], axis=0)
        ax.fill_between(grid, low, high, color="0.85", zorder=1, label=f"middle 80 % of all {len(present)} classes")
        ax.plot(grid, median, color="0.45", lw=2.0, zorder=2, label="median over all classes")
    for k, i in enumerate(shown):
        precision, recall = curves[i]
        rank = "" if few else f"#{ranked.index(i) + 1} "
        ax.plot(recall, precision, drawstyle="steps-post", lw=1.6, zorder=3 + 0.01 * k,
                color=_COLORS[k % len(_COLORS)], ls=_LINESTYLES[k % len(_LINESTYLES)],
                marker=_MARKERS[k % len(_MARKERS)], ms=5, markevery=(0.011 * k, 0.12),
                label=f"{rank}{names[i]}: AP {ap[i]:.3f}, n={support[i]}")
    precision, recall = _drawn(*metrics.pr_curve(onehot.ravel(), p.ravel())[:2])
    ax.plot(recall, precision, drawstyle="steps-post", color="black", lw=2.2, ls=(0, (4, 2)), zorder=2.9,
            label=f"micro-average: AP {_ap(precision, recall):.3f}")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.04)
    ax.set_xlabel("Recall")
    ax.set_ylabel("Precision")
    ax.grid(alpha=0.3)
    skipped = c - len(present)
    note = f"; {skipped} without samples" if skipped else ""
    mean_ap = f"mean AP {np.mean(list(ap.values())):.3f}" if ap else "no class has samples"
    ax.set_title(f"Precision-recall, one vs rest: {mean_ap} over {len(present)} classes{note}")
    heading = None if few else f"best {EXTREMES} and worst {EXTREMES} of {len(present)} by AP"
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, title=heading, title_fontsize=8,
              frameon=False)
    return fig


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
    if family in _LR_KEYS:
        return 3
    return 1 if "acc" in family or "top" in family else 2


def _best(epochs: np.ndarray, series: dict[str, np.ndarray], best_epoch: int | None,
          monitor: str | None) -> tuple[float | None, str | None]:
    """The best epoch and the key it is read on: `best_epoch` when given, else the extreme of `monitor`,
    else of the first of `_BEST_FROM` the history holds (a loss is best at its minimum)."""
    usable = [k for k in (monitor, *_BEST_FROM) if k in series and np.isfinite(series[k]).any()]
    key = usable[0] if usable else None
    if best_epoch is None and key is not None:
        values = series[key]
        best_epoch = epochs[np.nanargmin(values) if "loss" in key else np.nanargmax(values)]
    if best_epoch is None or best_epoch not in epochs:
        return None, None
    return float(best_epoch), key


def training_curves(
    history: Mapping[str, Sequence[float]] | str | os.PathLike,
    path: str | os.PathLike,
    *,
    best_epoch: int | None = None,
    monitor: str | None = None,
) -> Path:
    """Train and validation curves against epoch (see `curves_figure`)."""
    return _save(curves_figure(history, best_epoch=best_epoch, monitor=monitor), path)


def curves_figure(history: Mapping[str, Sequence[float]] | str | os.PathLike, *, best_epoch: int | None = None,
                  monitor: str | None = None) -> Figure:
    """One panel per metric family (loss, accuracy, ..., learning rate last), epochs numbered as logged.

    `history` is a Keras-style dict (`loss`, `val_loss`, ...) or a CSV with an `epoch` column; empty cells
    are gaps, so metrics logged on some epochs only still plot. Timing columns are bookkeeping and left
    out. A dotted line on every panel and a star on the monitored curve mark the best epoch (see `_best`;
    an epoch the history does not hold draws none). The learning rate is the one at each epoch's first
    step, so a per-step warm-up shows as a ramp from a tiny value: log scale when it spans a decade.
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
    best, best_key = _best(epochs, series, best_epoch, monitor)
    ordered = sorted(families, key=_family_order)
    ncols = min(len(ordered), 3)
    nrows = math.ceil(len(ordered) / ncols)
    fig = _new_figure(4.8 * ncols, 3.6 * nrows + 0.4)
    marker = "o" if epochs.size <= 40 else None
    pad = max(0.5, 0.03 * float(np.ptp(epochs)))  # a single epoch still gets an integer tick
    for idx, family in enumerate(ordered):
        ax = fig.add_subplot(nrows, ncols, idx + 1)
        for split, key in sorted(families[family]):
            values = series[key]
            keep = np.isfinite(values)
            ax.plot(epochs[keep], values[keep], marker=marker, ms=3, label=split,
                    color="tab:blue" if split == "train" else "tab:orange")
            if best is not None and key == best_key:
                value = values[epochs == best][0]
                ax.plot([best], [value], marker="*", ms=14, ls="none", color=_BEST_COLOR, mec="black", mew=0.6,
                        zorder=5, clip_on=False, label=f"best: epoch {best:g}", gid="best-epoch")
        if best is not None:
            ax.axvline(best, color=_BEST_COLOR, ls=":", lw=1.3, zorder=1.5, gid="best-epoch-line")
        lr = family in _LR_KEYS
        values = np.concatenate([series[k] for _, k in families[family]])
        values = values[np.isfinite(values)]
        if lr and values.size and values.min() > 0 and values.max() >= 10 * values.min():
            ax.set_yscale("log")
        ax.set_title("learning rate" if lr else family)
        ax.set_ylabel("learning rate (epoch start)" if lr else family)
        ax.set_xlabel("epoch")
        ax.set_xlim(epochs.min() - pad, epochs.max() + pad)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        ax.grid(alpha=0.3)
        if len(ax.get_legend_handles_labels()[0]) > 1:
            ax.legend(fontsize=8)
    if best is not None:
        score = f": {best_key} {series[best_key][epochs == best][0]:.4g}" if best_key else ""
        fig.suptitle(f"best epoch {best:g}{score}", fontsize=11)
    return fig
