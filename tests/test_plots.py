"""vidcli.plots: valid PNGs of stable, bounded size; curves and markers where the eye needs them (checked on the
rendered pixels); atomic writes, no leaked figures, clear errors."""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

import matplotlib.image as mpimg
import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.colors import to_rgb
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


def test_pr_curves_with_legend_and_missing_class(tmp_path):
    labels, logits = _classification(2, 200, 5, skip=(3,))
    out = plots.pr_curves(labels, metrics.softmax(logits), ["a", "b", "c", "d", "e"], tmp_path / "pr.png")
    five = assert_clean_png(out)
    labels, logits = _classification(3, 400, 25)
    assert assert_clean_png(plots.pr_curves(labels, logits, [str(i) for i in range(25)], tmp_path / "pr25.png")) == five
    fig = plots.pr_figure(*_classification(2, 200, 5, skip=(3,)), ["a", "b", "c", "d", "e"])
    assert fig.axes[0].get_title().endswith("over 4 classes; 1 without samples")
    assert not any(t.get_text().startswith("d:") for t in fig.axes[0].get_legend().get_texts())


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


# -- what the eye needs, checked on the rendered pixels ---------------------------------------------------------


def render(fig: Figure, path: Path) -> np.ndarray:
    """Save as the module does (fixed size, no tight box) and read back RGB; the figure keeps its last layout,
    so its transforms map data to the saved pixels."""
    fig.savefig(path, format="png", dpi=plots.DPI)
    return mpimg.imread(path)[..., :3]


def pixel(img: np.ndarray, ax, x: float, y: float) -> np.ndarray:
    col, row = ax.transData.transform((x, y))
    return img[int(round(img.shape[0] - row)), int(round(col))]


def share_of(img: np.ndarray, ax, points, color) -> float:
    """How many of `points` (data coordinates) are painted `color`: dashed lines leave gaps."""
    hits = [np.abs(pixel(img, ax, x, y) - to_rgb(color)).max() < 0.08 for x, y in points]
    return sum(hits) / len(hits)


def _ucf_like(c: int, per_class: int, seed: int = 0, difficulty=(0.5, 5.0)) -> tuple[np.ndarray, np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(c), per_class)
    logits = rng.normal(size=(labels.size, c))
    logits[np.arange(labels.size), labels] += rng.uniform(*difficulty, size=c)[labels]
    logits[labels == 0, 0] += 50.0  # class 0 is perfect: AP 1.0
    return labels, metrics.softmax(logits), [f"SomeLongActionName{i:03d} playing" for i in range(c)]


def test_perfect_class_curve_is_inside_the_frame_and_visible(tmp_path):
    labels, probs, names = _ucf_like(3, 20, difficulty=(0.5, 0.5))
    fig = plots.pr_figure(labels, probs, names)
    ax = fig.axes[0]
    assert ax.get_xlim()[0] < 0 < 1 < ax.get_xlim()[1] and ax.get_ylim()[0] < 0 < 1 < ax.get_ylim()[1]
    perfect = next(line for line in ax.get_lines() if line.get_label().startswith(names[0]))
    assert "AP 1.000" in perfect.get_label()
    assert perfect.get_zorder() > max(spine.get_zorder() for spine in ax.spines.values())
    img = render(fig, tmp_path / "pr.png")
    along_top = [(x, 1.0) for x in np.linspace(0.3, 0.7, 41)]
    down_right = [(1.0, y) for y in np.linspace(0.5, 0.9, 41)]
    assert share_of(img, ax, along_top, perfect.get_color()) > 0.5
    assert share_of(img, ax, down_right, perfect.get_color()) > 0.5
    top_spine = ax.transData.transform((0.5, ax.get_ylim()[1]))[1]
    assert top_spine - ax.transData.transform((0.5, 1.0))[1] >= 4  # pixels between the curve and the frame


@pytest.mark.parametrize(("c", "entries"), [(2, 3), (10, 11), (101, 13), (400, 13)])
def test_pr_legend_and_size_hold_from_2_to_400_classes(tmp_path, c, entries):
    labels, probs, names = _ucf_like(c, 2 if c > 100 else 10)
    fig = plots.pr_figure(labels, probs, names)
    ax = fig.axes[0]
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    assert len(texts) == entries
    per_class = [t for t in texts if names[0][:10] in t]
    assert len(per_class) == min(c, 2 * plots.EXTREMES) and all(", AP " in t or ": AP " in t for t in per_class)
    assert per_class[0].split(": AP")[0].endswith(names[0]) and "AP 1.000" in per_class[0]  # best first
    onehot = labels[:, None] == np.arange(c)
    aps = [metrics.average_precision(onehot[:, i], probs[:, i]) for i in range(c)]
    assert f"mean AP {np.mean(aps):.3f} over {c} classes" in ax.get_title()
    if c > plots.ALL_CURVES_MAX_CLASSES:
        assert per_class[-1].startswith(f"#{c} ") and "middle 80 % of all" in texts[0]
        assert float(per_class[-1].split("AP ")[1][:5]) == pytest.approx(min(aps), abs=5e-4)
    assert png_size(plots._save(fig, tmp_path / "pr.png")) == (1100, 650)


def test_band_summarises_the_same_ap():
    rng = np.random.default_rng(4)
    for _ in range(5):
        y = rng.random(300) < 0.2
        s = rng.normal(size=300) + y * rng.uniform(0, 3)
        precision, recall, _ = metrics.pr_curve(y, s)
        assert plots._ap(precision, recall) == pytest.approx(metrics.average_precision(y, s), abs=1e-12)
        grid = np.linspace(0, 1, 20001)
        mean = plots._precision_at(*plots._drawn(precision, recall), grid).mean()
        assert mean == pytest.approx(metrics.average_precision(y, s), abs=2e-3)


@pytest.mark.parametrize("c", [101, 400])
def test_heatmap_is_bounded_and_tick_labels_never_overlap(tmp_path, c):
    cm = np.eye(c, dtype=int) * 3 + np.roll(np.eye(c, dtype=int), 1, axis=1)
    names = [f"playing some instrument {i:03d} (long name)" for i in range(c)]
    fig = plots.heatmap_figure(cm, names, normalize=True)
    render(fig, tmp_path / "cm.png")
    ax = fig.axes[0]
    ys = sorted((t.get_window_extent() for t in ax.get_yticklabels()), key=lambda b: b.y0)
    xs = sorted((t.get_window_extent() for t in ax.get_xticklabels()), key=lambda b: b.x0)
    assert len(ys) == len(xs) and (len(ys) == c if c <= 101 else c / 5 < len(ys) < c)
    assert all(a.y1 <= b.y0 for a, b in zip(ys[:-1], ys[1:], strict=True)), "y tick labels overlap"
    assert all(a.x1 <= b.x0 for a, b in zip(xs[:-1], xs[1:], strict=True)), "x tick labels overlap"
    assert min(t.get_fontsize() for t in ax.get_yticklabels()) >= 6
    assert ax.get_yticklabels()[0].get_text() == names[0][: plots.NAME_MAX_CHARS - 1] + "…"
    width, height = png_size(plots._save(fig, tmp_path / "cm.png"))
    assert width <= 2400 and height <= 2400


def test_row_normalised_heatmap_shows_small_confusions(tmp_path):
    c = 50
    cm = np.eye(c, dtype=int) * 49
    cm[7, 20] = 1  # 2 % of class 7 goes to class 20
    fig = plots.heatmap_figure(cm, [f"c{i}" for i in range(c)], normalize=True)
    img = render(fig, tmp_path / "cm.png")
    ax = fig.axes[0]
    error, empty = pixel(img, ax, 20.5, 7.5), pixel(img, ax, 21.5, 7.5)
    assert np.abs(error - empty).max() > 0.06, (error, empty)


def test_small_heatmap_annotates_non_zero_cells_only():
    cm = np.array([[5, 0, 1], [0, 7, 0], [2, 0, 3]])
    ax = plots.heatmap_figure(cm, ["a", "b", "c"]).axes[0]
    assert sorted(t.get_text() for t in ax.texts if t.get_text()) == ["1", "2", "3", "5", "7"]


def _history(epochs: int = 8) -> dict[str, list[float]]:
    steps, warm = 100, 2
    return {
        "epoch": list(range(1, epochs + 1)),
        "loss": list(np.linspace(2.0, 0.4, epochs)),
        "val_loss": [1.9, 1.5, 1.2, 1.0, 0.8, 0.9, 1.1, 1.3][:epochs],
        "accuracy": list(np.linspace(0.2, 0.95, epochs)),
        "val_accuracy": [0.2, 0.4, 0.6, 0.7, 0.68, 0.65, 0.6, 0.55][:epochs],
        "lr": [1e-3 * (e * steps + 1) / (warm * steps) if e < warm else 1e-3 for e in range(epochs)],
        "seconds": [30.0] * epochs,
    }


def _best_lines(fig: Figure):
    return [[line for line in ax.get_lines() if line.get_gid() == "best-epoch-line"] for ax in fig.axes]


def test_training_curves_mark_best_epoch_label_every_panel_and_log_warmup_lr(tmp_path):
    fig = plots.curves_figure(_history())
    loss, acc, lr = fig.axes
    assert [ax.get_ylabel() for ax in fig.axes] == ["loss", "accuracy", "learning rate (epoch start)"]
    assert list(loss.get_lines()[0].get_xdata()) == list(range(1, 9))
    assert all(len(lines) == 1 and list(lines[0].get_xdata()) == [4, 4] for lines in _best_lines(fig))
    star = next(line for line in acc.get_lines() if line.get_gid() == "best-epoch")
    assert (star.get_xdata()[0], star.get_ydata()[0]) == (4, 0.7)
    assert "best epoch 4: val_accuracy 0.7" in fig._suptitle.get_text()
    assert lr.get_yscale() == "log" and loss.get_yscale() == "linear"
    img = render(fig, tmp_path / "curves.png")
    np.testing.assert_allclose(pixel(img, acc, 4, 0.7), to_rgb(plots._BEST_COLOR), atol=0.1)


@pytest.mark.parametrize(
    ("kwargs", "epoch", "panel"),
    [
        ({"best_epoch": 6}, 6, 1),
        ({"best_epoch": 5, "monitor": "val_loss"}, 5, 0),
        ({"monitor": "val_loss"}, 5, 0),
        ({"monitor": "no_such_key"}, 4, 1),
    ],
)
def test_best_epoch_given_or_from_monitor(kwargs, epoch, panel):
    fig = plots.curves_figure(_history(), **kwargs)
    stars = [(i, line.get_xdata()[0]) for i, ax in enumerate(fig.axes) for line in ax.get_lines()
             if line.get_gid() == "best-epoch"]
    assert stars == [(panel, epoch)]


def test_best_epoch_falls_back_and_never_invents_one(tmp_path):
    fig = plots.curves_figure({"loss": [1.0, 0.5, 0.7]})
    assert [line.get_xdata()[0] for line in fig.axes[0].get_lines() if line.get_gid() == "best-epoch"] == [2]
    fig = plots.curves_figure(_history(), best_epoch=12)
    assert _best_lines(fig) == [[], [], []] and fig._suptitle is None
    history = _history()
    history["lr"] = [1e-3, 8e-4, 6e-4, 4e-4, 3e-4, 2e-4, 1.5e-4, 1.2e-4]
    assert plots.curves_figure(history).axes[2].get_yscale() == "linear"


def test_one_epoch_gets_an_integer_tick_and_a_visible_best_marker():
    ax = plots.curves_figure({"loss": [1.2]}).axes[0]
    low, high = ax.get_xlim()
    assert [t for t in ax.get_xticks() if low <= t <= high] == [1.0]
    star = next(line for line in ax.get_lines() if line.get_gid() == "best-epoch")
    assert not star.get_clip_on()  # a best value at the edge of the y range is not cut in half
