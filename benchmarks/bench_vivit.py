"""ViViT cost and learning: the `vivit_organmnist3d` recipe's training time, Keras vs ONNX Runtime inference,
and the quickstart's test accuracy on built-in synthetic volumes.

OrganMNIST3D cannot be downloaded here, so the recipe is timed on a random npz of exactly its shapes
(972 / 161 / 610 volumes of 28^3 uint8, 11 classes): the cost of a ViViT step does not depend on the
voxel values. A few epochs are measured and the 60 epochs extrapolated as first epoch (tracing
included) + 59 x the median of the later ones. Test accuracy on OrganMNIST3D itself (the Keras example:
76.7% top-1, 97.5% top-5) is pending the data; `--quickstart` shows learning instead.

    python benchmarks/bench_vivit.py [--quick] [--out FILE] [--epochs N] [--quickstart]
"""

from __future__ import annotations

import contextlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

ORGAN_COUNTS = {"train": 972, "val": 161, "test": 610}
ORGAN_CLASSES = 11
RECIPE = common.REPO / "recipes" / "vivit_organmnist3d.yaml"
QUICKSTART = common.REPO / "recipes" / "vivit_quickstart.yaml"
FULL_RUN_TARGET_MIN = 15.0
QUICKSTART_TARGET = 0.90
KERAS_EXAMPLE = {"top1": 0.767, "top5": 0.975}


def fake_organmnist(path: Path, counts: dict[str, int], size: int = 28, classes: int = ORGAN_CLASSES) -> Path:
    """Random volumes in the OrganMNIST3D layout (npz + labels sidecar): shapes for timing, nothing to learn."""
    from vidcli import fsio

    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in counts.items():
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, size, size, size), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % classes).astype(np.uint8).reshape(-1, 1)
    with fsio.atomic_path(path, suffix=".npz") as tmp:
        np.savez(tmp, **arrays)
    fsio.write_json(path.with_name(path.stem + ".labels.json"), {"labels": [f"organ{i}" for i in range(classes)]})
    return path


def train_run(recipe: Path, overrides: list[str], runs_dir: Path):
    from vidcli import training

    t0 = time.perf_counter()
    run = training.train(recipe, overrides, None, runs_dir)
    return run, time.perf_counter() - t0


def epoch_seconds(run) -> list[float]:
    from vidcli.runs import read_history

    return [float(r["seconds"]) for r in read_history(run)]


def inference(run, split: str, batch: int, repeat: int) -> dict:
    """Samples/s of the Keras model and of its ONNX export (with the export's parity) on one split."""
    import onnxruntime as ort

    from vidcli import models
    from vidcli.backends.keras.backend import BACKEND
    from vidcli.datasets.source import open_source
    from vidcli.exporting import export

    src = open_source(run.recipe.data, split, run.labels)
    card = models.run_card(run)
    x = card.preprocess(np.stack([src.load(i) for i in range(len(src))]))
    model = BACKEND.load(BACKEND.checkpoint(run), run.recipe, len(run.labels))

    def batches(fn):
        for i in range(0, len(x), batch):
            fn(x[i : i + batch])

    keras_t = common.time_calls(lambda: batches(lambda b: model.predict_on_batch(b)), repeat)
    exported = export(run)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(exported["path"], opts, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    onnx_t = common.time_calls(lambda: batches(lambda b: session.run(None, {name: b})), repeat)
    one_t = common.time_calls(lambda: session.run(None, {name: x[:1]}), max(3, repeat * 5))
    return {
        "samples": len(x), "batch": batch,
        "keras_samples_per_s": len(x) / statistics.median(keras_t), "keras_s": common.summary(keras_t),
        "onnx_samples_per_s": len(x) / statistics.median(onnx_t), "onnx_s": common.summary(onnx_t),
        "onnx_batch1_ms": 1000 * statistics.median(one_t),
        "onnx_max_abs_diff": exported["max_abs_diff"], "onnx_bytes": exported["bytes"],
    }


def organ_timing(work: Path, epochs: int, quick: bool) -> tuple[list[dict], dict]:
    counts = {"train": 16, "val": 4, "test": 8} if quick else ORGAN_COUNTS
    npz = fake_organmnist(work / "organmnist3d_28.npz", counts, size=8 if quick else 28)
    overrides = [f"data.root={npz}", f"train.epochs={epochs}"]
    if quick:
        overrides += ["model.params.num_layers=1", "model.params.projection_dim=16", "model.params.num_heads=2",
                      "model.params.patch_size=[2,2,2]"]
    common.log(f"training {RECIPE.name} for {epochs} epoch(s) on random volumes of OrganMNIST3D's shapes {counts}")
    run, wall = train_run(RECIPE, overrides, work / "runs")
    secs = epoch_seconds(run)
    steady = statistics.median(secs[1:]) if len(secs) > 1 else secs[0]
    full_min = (secs[0] + (60 - 1) * steady) / 60
    infer = inference(run, "test", 32, 1 if quick else 3)
    train_sps = counts["train"] / steady
    metrics = [
        common.metric("vivit_organmnist3d: 60 epochs (extrapolated)", full_min, "min",
                      "" if quick else f"< {FULL_RUN_TARGET_MIN:g} min",
                      None if quick else full_min < FULL_RUN_TARGET_MIN,
                      f"first epoch {secs[0]:.1f} s + 59 x {steady:.1f} s; random volumes of the real shapes"),
        common.metric("vivit_organmnist3d: training", train_sps, "volumes/s", "",
                      note="per epoch incl. its validation pass, batch 32"),
        common.metric("vivit_organmnist3d: Keras inference", infer["keras_samples_per_s"], "volumes/s", "",
                      note="batch 32, predict_on_batch"),
        common.metric("vivit_organmnist3d: ONNX Runtime inference", infer["onnx_samples_per_s"], "volumes/s", "",
                      note=f"batch 32; batch 1 {infer['onnx_batch1_ms']:.1f} ms"),
    ]
    details = {"counts": counts, "epochs_measured": len(secs), "epoch_seconds": secs, "steady_epoch_s": steady,
               "train_wall_s": wall, "params": run.state.get("params"), "inference": infer,
               "keras_example": KERAS_EXAMPLE,
               "organmnist3d_accuracy": "pending data: OrganMNIST3D cannot be downloaded here"}
    return metrics, details


def quickstart(work: Path, quick: bool) -> tuple[list[dict], dict]:
    from vidcli import evaluation

    overrides = [f"data.root={work / 'qs' / 'synth_volumes_28.npz'}"]
    if quick:
        overrides = [f"data.root={work / 'qs' / 'synth_volumes_8.npz'}", "data.synth.size=8", "train.epochs=1",
                     "data.synth.train=2", "data.synth.val=1", "data.synth.test=2", "model.params.num_layers=1",
                     "model.params.patch_size=[2,2,2]"]
    common.log(f"training {QUICKSTART.name} (synthetic volumes generated on first use)")
    run, wall = train_run(QUICKSTART, overrides, work / "runs")
    result = evaluation.evaluate(run, "test")
    target = "" if quick else f">= {QUICKSTART_TARGET:g}"
    metrics = [common.metric("vivit_quickstart: synthetic volumes test top-1", result["top1"], "", target,
                             None if quick else result["top1"] >= QUICKSTART_TARGET,
                             f"{result['num_samples']} test volumes; trained in {wall / 60:.1f} min"),
               common.metric("vivit_quickstart: training wall time", wall / 60, "min", "")]
    return metrics, {"test": result, "train_wall_s": wall, "epoch_seconds": epoch_seconds(run)}


def main() -> None:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=2, help="Epochs of the OrganMNIST3D recipe to time (>= 2).")
    p.add_argument("--quickstart", action="store_true", help="Also train the quickstart and report test top-1.")
    args = p.parse_args()
    started, load_before = time.time(), common.loadavg()
    epochs = 1 if args.quick else max(2, args.epochs)
    with tempfile.TemporaryDirectory(prefix="vidcli-bench-vivit-") as tmp, contextlib.redirect_stdout(sys.stderr):
        work = Path(tmp)
        metrics, details = organ_timing(work, epochs, args.quick)
        if args.quickstart or args.quick:
            qs_metrics, details["quickstart"] = quickstart(work, args.quick)
            metrics += qs_metrics
    common.emit(common.document("vivit", metrics, details, args.quick, load_before, started), args.out)


if __name__ == "__main__":
    main()
