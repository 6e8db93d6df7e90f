"""Classification metrics in plain NumPy, so evaluation and ONNX predict need no framework.

Definitions follow scikit-learn (the tests check against it) with two deliberate choices:
zero divisions give 0.0 silently, and score ties in top-k are broken toward the lower class
index, exactly like `np.argmax`, so top-1 always agrees with the argmax predictions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from vidcli.errors import VidcliError


def _as_scores(scores: Any, name: str, ndim: int) -> np.ndarray:
    try:
        arr = np.asarray(scores, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise VidcliError(f"{name} must be numeric: {exc}") from exc
    if arr.ndim != ndim:
        raise VidcliError(f"{name} must be {ndim}-D, got shape {arr.shape}")
    if arr.size == 0:
        raise VidcliError(f"{name} is empty (shape {arr.shape})")
    if not np.isfinite(arr).all():
        raise VidcliError(f"{name} contains NaN or infinite values")
    return arr


def _as_labels(labels: Any, name: str, num_classes: int | None = None) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise VidcliError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.size == 0:
        raise VidcliError(f"{name} is empty")
    integral = np.issubdtype(arr.dtype, np.floating) and np.isfinite(arr).all() and (arr == np.round(arr)).all()
    if not (integral or arr.dtype == bool or np.issubdtype(arr.dtype, np.integer)):
        raise VidcliError(f"{name} must hold integer class indices, got dtype {arr.dtype}")
    arr = arr.astype(np.int64, copy=False)
    if num_classes is not None:
        bad = np.flatnonzero((arr < 0) | (arr >= num_classes))
        if bad.size:
            i = int(bad[0])
            raise VidcliError(f"{name}[{i}] = {arr[i]} is outside the class range 0..{num_classes - 1}")
    return arr


def _check_num_classes(num_classes: int) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise VidcliError(f"num_classes must be a positive integer, got {num_classes!r}")
    return int(num_classes)


def check_scores(scores: Any, labels: Any, name: str = "scores") -> tuple[np.ndarray, np.ndarray]:
    """Validate an (N, C) score matrix and its N labels once, for callers that loop over classes."""
    arr = _as_scores(scores, name, 2)
    y = _as_labels(labels, "labels", arr.shape[1])
    if y.shape[0] != arr.shape[0]:
        raise VidcliError(f"labels has {y.shape[0]} entries but {name} has {arr.shape[0]} rows")
    return arr, y


def _labels_and_preds(labels: Any, preds: Any, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    num_classes = _check_num_classes(num_classes)
    y = _as_labels(labels, "labels", num_classes)
    p = _as_labels(preds, "preds", num_classes)
    if y.shape != p.shape:
        raise VidcliError(f"labels has {y.shape[0]} entries but preds has {p.shape[0]}")
    return y, p


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    out = np.zeros(np.broadcast(num, den).shape, dtype=np.float64)
    np.divide(num, den, out=out, where=den != 0)
    return out


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis; subtracting the row maximum keeps large logits from overflowing."""
    x = np.asarray(logits, dtype=np.float64)
    if x.ndim == 0 or x.size == 0:
        raise VidcliError(f"logits must be a non-empty array, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise VidcliError("logits contains NaN or infinite values")
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def topk_accuracy(scores: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Fraction of samples whose true class ranks within the top `k` (k is clipped to the class count).

    A class outranks the true one if its score is higher, or equal with a lower index; this matches
    `np.argmax`, and constant scores cannot earn credit from ties.
    """
    s, y = check_scores(scores, labels)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise VidcliError(f"k must be a positive integer, got {k!r}")
    k = min(int(k), s.shape[1])
    true_score = s[np.arange(s.shape[0]), y][:, None]
    idx = np.arange(s.shape[1])[None, :]
    rank = (s > true_score).sum(axis=1) + ((s == true_score) & (idx < y[:, None])).sum(axis=1)
    return float(np.mean(rank < k))


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts with rows = true class and columns = predicted class, as int64."""
    y, p = _labels_and_preds(labels, preds, num_classes)
    c = int(num_classes)
    return np.bincount(y * c + p, minlength=c * c).reshape(c, c).astype(np.int64)


def mean_class_accuracy(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> float:
    """Mean per-class recall over classes present in `labels` (sklearn's balanced accuracy).

    Classes without true samples are left out: their recall is undefined, and counting them as 0
    would punish a test split for not covering every class.
    """
    cm = confusion_matrix(labels, preds, num_classes)
    support = cm.sum(axis=1)
    present = support > 0
    return float(np.mean(np.diag(cm)[present] / support[present]))


def _prf_from_cm(cm: np.ndarray) -> dict[str, Any]:
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    precision = _safe_div(tp, predicted)
    recall = _safe_div(tp, support)
    f1 = _safe_div(2 * tp, predicted + support)
    total = support.sum()
    weights = support / total if total else np.zeros_like(tp)
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "support": support.astype(np.int64),
        "macro": {m: float(v.mean()) for m, v in (("precision", precision), ("recall", recall), ("f1", f1))},
        "weighted": {
            m: float((v * weights).sum()) for m, v in (("precision", precision), ("recall", recall), ("f1", f1))
        },
    }


def precision_recall_f1(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> dict[str, Any]:
    """Per-class precision, recall, F1 and support, plus `macro` and `weighted` averages.

    Any 0/0 (a class never predicted, or never present) is 0.0 rather than NaN, so reports stay
    JSON-friendly; macro averages include every class, as scikit-learn's do.
    """
    return _prf_from_cm(confusion_matrix(labels, preds, num_classes))


def _binary_inputs(binary_labels: Any, scores: Any) -> tuple[np.ndarray, np.ndarray]:
    s = _as_scores(scores, "scores", 1)
    y = _as_labels(binary_labels, "binary_labels")
    if ((y != 0) & (y != 1)).any():
        raise VidcliError("binary_labels must contain only 0 and 1")
    if y.shape != s.shape:
        raise VidcliError(f"binary_labels has {y.shape[0]} entries but scores has {s.shape[0]}")
    return y, s


def pr_curve(binary_labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall and increasing thresholds, as scikit-learn's `precision_recall_curve`.

    One point per distinct score (ties move together), then the (recall 0, precision 1) end point.
    With no positives at all recall is 1 everywhere, which is also scikit-learn's convention.
    """
    y, s = _binary_inputs(binary_labels, scores)
    order = np.argsort(s, kind="mergesort")[::-1]
    s_sorted, y_sorted = s[order], y[order]
    ends = np.r_[np.flatnonzero(np.diff(s_sorted)), y.size - 1]
    tps = np.cumsum(y_sorted)[ends].astype(np.float64)
    precision = tps / (ends + 1)
    recall = tps / tps[-1] if tps[-1] > 0 else np.ones_like(tps)
    return np.r_[precision[::-1], 1.0], np.r_[recall[::-1], 0.0], s_sorted[ends][::-1]


def average_precision(binary_labels: np.ndarray, scores: np.ndarray) -> float:
    """Step-wise area under the PR curve: sum of precision times each recall increase.

    No interpolation (as scikit-learn). A class with no positives gets 0.0: there is nothing to
    retrieve, and 0.0 keeps reports numeric; averages in `per_class_report` leave such classes out.
    """
    y, s = _binary_inputs(binary_labels, scores)
    if not y.any():
        return 0.0
    precision, recall, _ = pr_curve(y, s)
    return float(max(0.0, -np.sum(np.diff(recall) * precision[:-1])))


def cross_entropy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log-likelihood computed from logits with log-sum-exp, so it never sees log(0)."""
    x, y = check_scores(logits, labels, "logits")
    m = x.max(axis=1)
    lse = m + np.log(np.exp(x - m[:, None]).sum(axis=1))
    return float(np.mean(lse - x[np.arange(x.shape[0]), y]))


def _check_names(class_names: Sequence[str], num_classes: int) -> list[str]:
    names = [str(n) for n in class_names]
    if len(names) != num_classes:
        raise VidcliError(f"got {len(names)} class names for {num_classes} classes (logits columns)")
    return names


def summarize(logits: np.ndarray, labels: np.ndarray, class_names: Sequence[str]) -> dict[str, Any]:
    """Headline numbers for `vidcli evaluate --json`, as plain Python numbers."""
    x, y = check_scores(logits, labels, "logits")
    c = x.shape[1]
    _check_names(class_names, c)
    return {
        "num_samples": int(x.shape[0]),
        "top1": topk_accuracy(x, y, 1),
        "top5": topk_accuracy(x, y, min(5, c)),
        "mean_class_accuracy": mean_class_accuracy(y, x.argmax(axis=1), c),
        "loss": cross_entropy(x, y),
    }


def per_class_report(logits: np.ndarray, labels: np.ndarray, class_names: Sequence[str]) -> list[dict[str, Any]]:
    """One row per class, then `macro avg` and `weighted avg` rows (support there is the sample count).

    Predictions are the argmax; AP is one-vs-rest on the softmax. The macro AP averages only classes
    with true samples, because their AP of 0.0 is a convention, not a measurement.
    """
    x, y = check_scores(logits, labels, "logits")
    c = x.shape[1]
    names = _check_names(class_names, c)
    prf = precision_recall_f1(y, x.argmax(axis=1), c)
    probs = softmax(x)
    ap = np.array([average_precision(y == i, probs[:, i]) for i in range(c)])
    support = prf["support"]
    rows = [
        {
            "class": names[i],
            "precision": float(prf["precision"][i]),
            "recall": float(prf["recall"][i]),
            "f1": float(prf["f1"][i]),
            "support": int(support[i]),
            "average_precision": float(ap[i]),
        }
        for i in range(c)
    ]
    n = int(support.sum())
    for name, key, class_ap in (
        ("macro avg", "macro", float(ap[support > 0].mean())),
        ("weighted avg", "weighted", float((ap * support).sum() / n)),
    ):
        rows.append({"class": name, **prf[key], "support": n, "average_precision": class_ap})
    return rows
