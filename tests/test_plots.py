"""vidcli.plots: valid PNGs of stable size, atomic writes, no leaked figures, clear errors."""

from __future__ import annotations

import struct
import subprocess
import sys
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.figure import Figure

from vidcli import metrics, plots
from vidcli.errors import VidcliError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
REPO = Path(__file__).resolve().parents[1]


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    assert data[-8:-4] == b"IEND", f"{path} is truncated"
    return struct.unpack(">II", data[16:24])


def assert_clean_png(path: Path, min_bytes: int = 10_000) -> tuple[int, int]:
    assert path.is_file()
    assert path.stat().st_size > min_bytes
    leftovers = [p.name for p in path.parent.iterdir() if ".partial-" in p.name]
    assert leftovers == []
    assert plt.get_fignums() == []
    return png_size(path)


def _classification(seed: int, n: int, c: int, skip: tuple[int, ...] = ()) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    allowed = [i for i in range(c) if i not in skip]
    labels = rng.choice(allowed, size=n)
    logits = rng.normal(size=(n, c))
    logits[np.arange(n), labels] += 2.0
    return labels, logits


def test_confusion_heatmap_counts_and_normalised(tmp_path):
    labels, logits = _classification(0, 300, 6, skip=(4,))
    cm = metrics.confusion_matrix(labels, logits.argmax(1), 6)
    names = ["walk", "run", "jump", "ApplyEyeMakeupVeryLongName", "never_seen", "swim"]
    out = plots.confusion_heatmap(cm, names, tmp_path / "cm.png")
    assert out == tmp_path / "cm.png"
    size = assert_clean_png(out)
    out_n = plots.confusion_heatmap(cm, names, tmp_path / "sub" / "cm_norm.png", normalize=True, title="Val")
    assert assert_clean_png(out_n) == size


def test_row_normalisation_keeps_empty_rows_zero():
    cm = np.array([[3, 1, 0], [0, 0, 0], [2, 2, 4]])
    norm = plots._row_normalize(cm)
    np.testing.assert_allclose(norm.sum(axis=1), [1.0, 0.0, 1.0])
    np.testing.assert_allclose(norm[0], [0.75, 0.25, 0.0])
    assert np.isfinite(norm).all()


def test_heatmap_size_depends_only_on_class_count(tmp_path):
    sizes = set()
    for seed in range(2):
        labels, logits = _classification(seed, 50 + 100 * seed, 5)
        cm = metrics.confusion_matrix(labels, logits.argmax(1), 5)
        sizes.add(png_size(plots.confusion_heatmap(cm, list("abcde"), tmp_path / f"{seed}.png")))
    assert len(sizes) == 1
    small = png_size(tmp_path / "0.png")
    big = plots.confusion_heatmap(np.eye(40, dtype=int), [f"class{i}" for i in range(40)], tmp_path / "40.png")
    assert png_size(big)[0] > small[0]


@pytest.mark.slow
def test_heatmap_with_101_classes_renders_in_reasonable_time(tmp_path):
    labels, logits = _classification(1, 2000, 101)
    cm = metrics.confusion_matrix(labels, logits.argmax(1), 101)
    names = [f"UCF101ActionClass{i:03d}" for i in range(101)]
    start = time.perf_counter()
    out = plots.confusion_heatmap(cm, names, tmp_path / "cm101.png", normalize=True)
    elapsed = time.perf_counter() - start
    width, height = assert_clean_png(out, min_bytes=100_000)
    assert width >= 2500 and height >= 2500
    assert elapsed < 60, f"101-class heatmap took {elapsed:.1f}s"


def test_pr_curves_with_legend_and_missing_class(tmp_path):
    labels, logits = _classification(2, 200, 5, skip=(3,))
    out = plots.pr_curves(labels, metrics.softmax(logits), ["a", "b", "c", "d", "e"], tmp_path / "pr.png")
    wide = assert_clean_png(out)
    labels, logits = _classification(3, 400, 25)
    narrow = assert_clean_png(plots.pr_curves(labels, logits, [str(i) for i in range(25)], tmp_path / "pr25.png"))
    assert wide[0] > narrow[0]


def test_training_curves_from_dict(tmp_path):
    epochs = 12
    history = {
        "loss": list(np.linspace(2.0, 0.5, epochs)),
        "val_loss": list(np.linspace(2.2, 0.9, epochs)),
        "accuracy": list(np.linspace(0.1, 0.8, epochs)),
        "val_accuracy": list(np.linspace(0.1, 0.6, epochs)),
        "learning_rate": [1e-3 * 0.8**i for i in range(epochs)],
    }
    size = assert_clean_png(plots.training_curves(history, tmp_path / "curves.png"))
    assert size[0] > size[1]
    only_loss = png_size(plots.training_curves({"loss": [1.0, 0.5]}, tmp_path / "loss.png"))
    assert only_loss[0] < size[0]


def test_training_curves_from_csv_with_gaps_and_text_columns(tmp_path):
    csv_path = tmp_path / "results.csv"
    csv_path.write_text(
        "epoch,loss,val_loss,train_top5,val_top5,checkpoint\n"
        "0,1.9,2.0,0.3,0.25,last.keras\n"
        "1,1.4,,0.5,,last.keras\n"
        "2,1.1,1.3,0.6,0.55,best.keras\n",
        encoding="utf-8",
    )
    two_panels = assert_clean_png(plots.training_curves(csv_path, tmp_path / "curves.png"))
    assert_clean_png(plots.training_curves(str(csv_path), tmp_path / "curves2.png"))
    keras_csv = tmp_path / "history.csv"
    keras_csv.write_text(
        "epoch,loss,accuracy,val_loss,val_accuracy,lr,seconds\n1,2.0,0.1,2.1,0.1,0.001,30.5\n2,1.5,0.3,,,0.0005,31.0\n",
        encoding="utf-8",
    )
    three_panels = assert_clean_png(plots.training_curves(keras_csv, tmp_path / "keras.png"))
    assert three_panels[1] == two_panels[1] and three_panels[0] > two_panels[0]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("loss,val_loss\n1.0,2.0\n", "no 'epoch' column"),
        ("epoch,loss\n", "no rows"),
        ("epoch,loss\n0,1.0\n1,abc\n", r"row 3, column 'loss': 'abc' is not a number"),
    ],
)
def test_training_curves_bad_csv(tmp_path, text, message):
    csv_path = tmp_path / "results.csv"
    csv_path.write_text(text, encoding="utf-8")
    with pytest.raises(VidcliError, match=message):
        plots.training_curves(csv_path, tmp_path / "out.png")
    assert not (tmp_path / "out.png").exists()


@pytest.mark.parametrize(
    ("history", "message"),
    [
        ({}, "no metric"),
        ({"epoch": [1, 2]}, "no metric"),
        ({"epoch": [1, 2], "seconds": [3.0, 4.0]}, "no metric to plot"),
        ({"loss": []}, "empty"),
        ({"loss": [1.0, 0.5], "val_loss": [1.0]}, "'val_loss' has 1 values for 2 epochs"),
        ({"loss": ["x"]}, "'loss': values must be numbers"),
        ([1.0, 2.0], "must be a dict or a CSV path"),
    ],
)
def test_training_curves_bad_history(tmp_path, history, message):
    with pytest.raises(VidcliError, match=message):
        plots.training_curves(history, tmp_path / "out.png")


def test_training_curves_missing_csv(tmp_path):
    with pytest.raises(VidcliError, match="file not found"):
        plots.training_curves(tmp_path / "nope.csv", tmp_path / "out.png")


@pytest.mark.parametrize(
    ("cm", "names", "message"),
    [
        (np.zeros((2, 3)), ["a", "b"], "square"),
        (np.zeros((0, 0)), [], "square and non-empty"),
        (np.array([[1, -1], [0, 2]]), ["a", "b"], "non-negative"),
        (np.eye(2), ["a"], "1 class names for 2 classes"),
    ],
)
def test_heatmap_bad_input(tmp_path, cm, names, message):
    with pytest.raises(VidcliError, match=message):
        plots.confusion_heatmap(cm, names, tmp_path / "cm.png")
    assert list(tmp_path.iterdir()) == []


def test_pr_curves_bad_input(tmp_path):
    with pytest.raises(VidcliError, match="labels has 3 entries but probs has 2 rows"):
        plots.pr_curves([0, 1, 1], np.ones((2, 2)), ["a", "b"], tmp_path / "pr.png")
    with pytest.raises(VidcliError, match="2 class names for 3 classes"):
        plots.pr_curves([0, 1], np.ones((2, 3)), ["a", "b"], tmp_path / "pr.png")
    assert list(tmp_path.iterdir()) == []


def test_failed_save_leaves_no_partial_file(tmp_path, monkeypatch):
    def boom(self, *args, **kwargs):
        raise RuntimeError("disk on fire")

    (tmp_path / "old.png").write_bytes(b"previous")
    monkeypatch.setattr(Figure, "savefig", boom)
    with pytest.raises(RuntimeError, match="disk on fire"):
        plots.training_curves({"loss": [1.0, 0.5]}, tmp_path / "old.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.png"]
    assert (tmp_path / "old.png").read_bytes() == b"previous"


def test_unwritable_destination_is_a_vidcli_error(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(VidcliError, match="cannot write") as info:
        plots.training_curves({"loss": [1.0]}, tmp_path / "file" / "curves.png")
    assert info.value.exit_code == 1


def test_many_calls_leak_no_figures(tmp_path):
    before = len(plt.get_fignums())
    for i in range(6):
        plots.training_curves({"loss": [1.0, 0.5, 0.2]}, tmp_path / f"c{i}.png")
    for i in range(3):
        plots.confusion_heatmap(np.eye(3, dtype=int), ["a", "b", "c"], tmp_path / f"m{i}.png")
    assert len(plt.get_fignums()) == before == 0
    assert len(list(tmp_path.glob("*.png"))) == 9


def test_imports_stay_light_and_agg():
    code = (
        "import sys, matplotlib\n"
        "import vidcli.metrics\n"
        "assert 'matplotlib.pyplot' not in sys.modules and 'seaborn' not in sys.modules\n"
        "import vidcli.plots\n"
        "assert matplotlib.get_backend().lower() == 'agg', matplotlib.get_backend()\n"
        "bad = [m for m in ('torch', 'tensorflow', 'keras') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
