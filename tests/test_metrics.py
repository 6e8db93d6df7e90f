"""vidcli.metrics checked against scikit-learn (a test-only dependency) on seeded random data."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from scipy.special import softmax as scipy_softmax
from sklearn import metrics as skm

from vidcli import metrics
from vidcli.errors import VidcliError


def _data(seed: int, n: int = 200, c: int = 7) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, c)) * 3
    labels = rng.integers(0, c, size=n)
    return logits, labels


def _edge_preds(seed: int, c: int = 6, n: int = 150) -> tuple[np.ndarray, np.ndarray]:
    """Class 1 never predicted, class 2 never true, class 3 neither."""
    rng = np.random.default_rng(seed)
    y = rng.choice([0, 1, 4, 5], size=n)
    p = rng.choice([0, 2, 4, 5], size=n)
    return y, p


@pytest.fixture
def no_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


def test_softmax_matches_scipy_and_is_stable(no_warnings):
    logits, _ = _data(0)
    np.testing.assert_allclose(metrics.softmax(logits), scipy_softmax(logits, axis=-1), rtol=1e-12)
    big = np.array([[1000.0, 1001.0, -1000.0], [-5e4, -5e4, -5e4]])
    out = metrics.softmax(big)
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out.sum(axis=1), 1.0)
    np.testing.assert_allclose(out[1], 1 / 3)
    np.testing.assert_allclose(metrics.softmax(logits + 123.0), metrics.softmax(logits), atol=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_topk_matches_sklearn(seed):
    logits, labels = _data(seed)
    c = logits.shape[1]
    for k in range(1, c):
        expected = skm.top_k_accuracy_score(labels, logits, k=k, labels=np.arange(c))
        assert metrics.topk_accuracy(logits, labels, k) == pytest.approx(expected)
    assert metrics.topk_accuracy(logits, labels, 1) == pytest.approx(skm.accuracy_score(labels, logits.argmax(1)))


def test_topk_clips_k_and_breaks_ties_like_argmax():
    logits, labels = _data(3, c=4)
    assert metrics.topk_accuracy(logits, labels, 4) == 1.0
    assert metrics.topk_accuracy(logits, labels, 50) == 1.0
    flat = np.zeros((6, 4))
    y = np.array([0, 0, 1, 2, 3, 3])
    assert metrics.topk_accuracy(flat, y, 1) == pytest.approx(2 / 6)
    assert metrics.topk_accuracy(flat, y, 2) == pytest.approx(3 / 6)
    tied = np.array([[1.0, 3.0, 3.0, 0.0]] * 2)
    assert metrics.topk_accuracy(tied, np.array([1, 2]), 1) == 0.5
    assert metrics.topk_accuracy(tied, np.array([1, 2]), 2) == 1.0


@pytest.mark.parametrize("seed", [0, 1])
def test_confusion_matrix_matches_sklearn(seed):
    for y, p, c in ((*_edge_preds(seed), 6), (_data(seed)[1], _data(seed + 10)[1], 7)):
        cm = metrics.confusion_matrix(y, p, c)
        assert cm.dtype == np.int64 and cm.shape == (c, c)
        np.testing.assert_array_equal(cm, skm.confusion_matrix(y, p, labels=np.arange(c)))
    cm = metrics.confusion_matrix([0, 0, 1], [1, 1, 1], 2)
    np.testing.assert_array_equal(cm, [[0, 2], [0, 1]])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mean_class_accuracy_is_balanced_accuracy(seed):
    y, p = _edge_preds(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = skm.balanced_accuracy_score(y, p)
    assert metrics.mean_class_accuracy(y, p, 6) == pytest.approx(expected)
    logits, labels = _data(seed)
    assert metrics.mean_class_accuracy(labels, logits.argmax(1), 7) == pytest.approx(
        skm.balanced_accuracy_score(labels, logits.argmax(1))
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_precision_recall_f1_matches_sklearn(seed, no_warnings):
    y, p = _edge_preds(seed)
    out = metrics.precision_recall_f1(y, p, 6)
    labels = np.arange(6)
    prec, rec, f1, support = skm.precision_recall_fscore_support(y, p, labels=labels, zero_division=0.0)
    np.testing.assert_allclose(out["precision"], prec)
    np.testing.assert_allclose(out["recall"], rec)
    np.testing.assert_allclose(out["f1"], f1)
    np.testing.assert_array_equal(out["support"], support)
    assert out["support"].dtype == np.int64
    for avg in ("macro", "weighted"):
        ref = skm.precision_recall_fscore_support(y, p, labels=labels, zero_division=0.0, average=avg)
        assert out[avg]["precision"] == pytest.approx(ref[0])
        assert out[avg]["recall"] == pytest.approx(ref[1])
        assert out[avg]["f1"] == pytest.approx(ref[2])
    for key in ("precision", "recall", "f1"):
        assert np.isfinite(out[key]).all()
        assert out[key][3] == 0.0
    assert out["precision"][1] == 0.0 and out["recall"][2] == 0.0


def _ties_case(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    scores = np.round(rng.random(300), 1)
    y = (rng.random(300) < scores).astype(int)
    return y, scores


@pytest.mark.parametrize("case", ["random", "ties", "all_positive", "single", "constant"])
def test_pr_curve_and_ap_match_sklearn(case):
    rng = np.random.default_rng(7)
    if case == "random":
        scores = rng.random(250)
        y = (rng.random(250) < 0.3).astype(int)
    elif case == "ties":
        y, scores = _ties_case(4)
    elif case == "all_positive":
        scores, y = rng.random(20), np.ones(20, dtype=int)
    elif case == "single":
        scores, y = np.array([0.4]), np.array([1])
    else:
        scores, y = np.full(10, 0.5), (np.arange(10) % 3 == 0).astype(int)
    precision, recall, thresholds = metrics.pr_curve(y, scores)
    ref_p, ref_r, ref_t = skm.precision_recall_curve(y, scores)
    np.testing.assert_allclose(precision, ref_p)
    np.testing.assert_allclose(recall, ref_r)
    np.testing.assert_allclose(thresholds, ref_t)
    assert metrics.average_precision(y, scores) == pytest.approx(skm.average_precision_score(y, scores))


def test_pr_curve_ties_collapse_to_distinct_thresholds():
    y, scores = _ties_case(5)
    _, _, thresholds = metrics.pr_curve(y, scores)
    np.testing.assert_array_equal(thresholds, np.unique(scores))


def test_no_positives_gives_ap_zero_without_warning(no_warnings):
    rng = np.random.default_rng(1)
    scores, y = rng.random(30), np.zeros(30, dtype=int)
    assert metrics.average_precision(y, scores) == 0.0
    precision, recall, _ = metrics.pr_curve(y, scores)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref_p, ref_r, _ = skm.precision_recall_curve(y, scores)
        assert skm.average_precision_score(y, scores) == 0.0
    np.testing.assert_allclose(precision, ref_p)
    np.testing.assert_allclose(recall, ref_r)


def test_perfect_ranking_has_ap_one():
    assert metrics.average_precision([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert metrics.average_precision([True, False], [0.9, 0.1]) == 1.0


@pytest.mark.parametrize("seed", [0, 1])
def test_cross_entropy_matches_log_loss(seed, no_warnings):
    logits, labels = _data(seed)
    expected = skm.log_loss(labels, scipy_softmax(logits, axis=1), labels=np.arange(7))
    assert metrics.cross_entropy(logits, labels) == pytest.approx(expected, rel=1e-10)


def test_cross_entropy_is_stable_for_huge_logits(no_warnings):
    logits = np.array([[1e4, 0.0], [0.0, 1e4]])
    assert metrics.cross_entropy(logits, [0, 1]) == pytest.approx(0.0, abs=1e-12)
    assert metrics.cross_entropy(logits, [1, 0]) == pytest.approx(1e4)
    assert metrics.cross_entropy(np.zeros((3, 4)), [0, 1, 3]) == pytest.approx(np.log(4))


def test_summarize_values_and_json():
    logits, labels = _data(11, c=8)
    names = [f"c{i}" for i in range(8)]
    out = metrics.summarize(logits, labels, names)
    assert set(out) == {"num_samples", "top1", "top5", "mean_class_accuracy", "loss"}
    assert out["num_samples"] == 200 and isinstance(out["num_samples"], int)
    assert out["top1"] == pytest.approx(skm.accuracy_score(labels, logits.argmax(1)))
    assert out["top5"] == pytest.approx(skm.top_k_accuracy_score(labels, logits, k=5, labels=np.arange(8)))
    assert out["mean_class_accuracy"] == pytest.approx(skm.balanced_accuracy_score(labels, logits.argmax(1)))
    assert out["loss"] == pytest.approx(skm.log_loss(labels, scipy_softmax(logits, axis=1), labels=np.arange(8)))
    assert json.loads(json.dumps(out)) == out
    assert all(type(v) is float for k, v in out.items() if k != "num_samples")


def test_summarize_with_fewer_than_five_classes_uses_k_equal_c():
    logits, labels = _data(12, c=3)
    assert metrics.summarize(logits, labels, ["a", "b", "c"])["top5"] == 1.0


def test_per_class_report_matches_sklearn(no_warnings):
    rng = np.random.default_rng(5)
    c, n = 5, 120
    labels = rng.choice([0, 1, 2, 4], size=n)
    logits = rng.normal(size=(n, c))
    logits[:, 3] -= 10
    logits[np.arange(n), labels] += 1.0
    names = ["walk", "run", "jump", "never", "swim"]
    rows = metrics.per_class_report(logits, labels, names)
    assert [r["class"] for r in rows] == names + ["macro avg", "weighted avg"]
    assert json.loads(json.dumps(rows)) == rows
    preds = logits.argmax(1)
    probs = scipy_softmax(logits, axis=1)
    prec, rec, f1, support = skm.precision_recall_fscore_support(labels, preds, labels=np.arange(c), zero_division=0.0)
    for i, row in enumerate(rows[:c]):
        assert row["precision"] == pytest.approx(prec[i])
        assert row["recall"] == pytest.approx(rec[i])
        assert row["f1"] == pytest.approx(f1[i])
        assert row["support"] == support[i]
        if support[i]:
            assert row["average_precision"] == pytest.approx(skm.average_precision_score(labels == i, probs[:, i]))
    assert rows[3]["support"] == 0 and rows[3]["average_precision"] == 0.0
    macro, weighted = rows[-2], rows[-1]
    assert macro["support"] == weighted["support"] == n
    ref_macro = skm.precision_recall_fscore_support(
        labels, preds, labels=np.arange(c), zero_division=0.0, average="macro"
    )
    assert macro["f1"] == pytest.approx(ref_macro[2])
    present = [0, 1, 2, 4]
    y_bin = (labels[:, None] == np.arange(c)[None, :]).astype(int)
    assert macro["average_precision"] == pytest.approx(
        skm.average_precision_score(y_bin[:, present], probs[:, present], average="macro")
    )
    assert weighted["average_precision"] == pytest.approx(
        skm.average_precision_score(y_bin[:, present], probs[:, present], average="weighted")
    )


def test_single_class_is_perfect(no_warnings):
    logits = np.random.default_rng(0).normal(size=(9, 1))
    labels = np.zeros(9, dtype=int)
    out = metrics.summarize(logits, labels, ["only"])
    assert out["top1"] == out["top5"] == out["mean_class_accuracy"] == 1.0
    assert out["loss"] == pytest.approx(0.0)
    np.testing.assert_array_equal(metrics.confusion_matrix(labels, labels, 1), [[9]])
    rows = metrics.per_class_report(logits, labels, ["only"])
    assert rows[0]["f1"] == 1.0 and rows[0]["average_precision"] == 1.0


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: metrics.topk_accuracy(np.zeros((3, 2)), [0, 1], 1), "labels has 2 entries but scores has 3 rows"),
        (lambda: metrics.topk_accuracy(np.zeros((2, 2)), [0, 2], 1), r"labels\[1\] = 2 is outside"),
        (lambda: metrics.topk_accuracy(np.zeros((2, 2)), [0, -1], 1), r"labels\[1\] = -1"),
        (lambda: metrics.topk_accuracy(np.zeros((2, 2)), [0, 1], 0), "k must be a positive integer"),
        (lambda: metrics.topk_accuracy(np.zeros((0, 2)), [], 1), "empty"),
        (lambda: metrics.topk_accuracy(np.zeros(4), [0, 1, 0, 1], 1), "must be 2-D"),
        (lambda: metrics.cross_entropy([[np.nan, 0.0]], [0]), "NaN"),
        (lambda: metrics.confusion_matrix([0, 1], [0], 2), "preds has 1"),
        (lambda: metrics.confusion_matrix([0.5, 1], [0, 1], 2), "integer class indices"),
        (lambda: metrics.confusion_matrix([[0, 1]], [[0, 1]], 2), "must be 1-D"),
        (lambda: metrics.confusion_matrix([0], [0], 0), "num_classes"),
        (lambda: metrics.mean_class_accuracy([], [], 3), "labels is empty"),
        (lambda: metrics.precision_recall_f1([0, 3], [0, 1], 3), r"labels\[1\] = 3"),
        (lambda: metrics.pr_curve([0, 2], [0.1, 0.2]), "only 0 and 1"),
        (lambda: metrics.pr_curve([0, 1, 1], [0.1, 0.2]), "binary_labels has 3 entries"),
        (lambda: metrics.average_precision([0, 1], ["a", "b"]), "must be numeric"),
        (lambda: metrics.summarize(np.zeros((2, 3)), [0, 1], ["a", "b"]), "2 class names for 3 classes"),
        (lambda: metrics.per_class_report(np.zeros((2, 3)), [0, 1], ["a"]), "1 class names"),
        (lambda: metrics.softmax(np.zeros((2, 0))), "non-empty"),
    ],
)
def test_bad_input_raises_vidcli_error(call, message):
    with pytest.raises(VidcliError, match=message) as info:
        call()
    assert info.value.exit_code == 2


def test_integral_float_and_bool_labels_are_accepted():
    cm = metrics.confusion_matrix(np.array([0.0, 1.0, 1.0]), np.array([True, True, False]), 2)
    np.testing.assert_array_equal(cm, [[0, 1], [1, 1]])


def test_balanced_class_weights_match_sklearn_and_spare_absent_classes():
    from types import SimpleNamespace

    from sklearn.utils.class_weight import compute_class_weight

    from vidcli.datasets.source import class_weights

    labels = np.array([0, 0, 0, 1, 2, 2, 4])  # class 3 absent
    split = SimpleNamespace(labels=labels, classes=["a", "b", "c", "d", "e"])
    w = class_weights(split, "balanced")
    present = np.array([0, 1, 2, 4])
    expected = compute_class_weight("balanced", classes=present, y=labels) * len(present) / 5
    np.testing.assert_allclose(w[present], expected, rtol=1e-6)
    assert w[3] == 0 and w.dtype == np.float32
    assert class_weights(split, "none") is None
