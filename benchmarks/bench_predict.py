"""`vidcli predict` on many files: one file at a time vs decoding in parallel with batched ONNX Runtime calls,
and ONNX Runtime's threads for one clip, side by side in one run.

The model: the TensorFlow tutorial's (2+1)D ResNet (10 frames of 224x224, `recipes/r2plus1d_ucf101.yaml`'s
shapes) with random weights, exported through `export-onnx RECIPE`. The inputs: the repository's real test
videos, linked N times (50 by default). Sequential = batch 1 and one decode thread (what `predict` did
before); parallel = `predict`'s defaults (batch 8, decode threads one batch ahead).

    python benchmarks/bench_predict.py [--quick] [--out FILE] [--files 50]
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def _export(folder: Path, quick: bool) -> Path:
    """The model with random weights as a run (as `vidcli benchmark RECIPE` builds it), exported to ONNX."""
    from vidcli import exporting, models, runs
    from vidcli import recipe as recipe_mod
    from vidcli.backends import registry
    from vidcli.datasets.synth import write_synth_videos

    data = write_synth_videos(folder / "data", classes=3, counts={"train": 1, "val": 0, "test": 0}, frames=8,
                              size=32)
    size = 32 if quick else 224
    raw = {"name": "bench", "data": {"root": str(data), "frames": 4 if quick else 10, "frame_step": 2,
                                     "size": [size, size]},
           "model": {"arch": "r2plus1d", "params": {"filters": [4, 8] if quick else [16, 32, 64, 128]}}}
    rec = recipe_mod.parse(raw)
    labels = ["down", "left", "right"]
    run = runs.start(folder / "runs", rec, labels, "keras")
    shape = models.sample_shape(rec)
    models.write_card(run, registry.spec("r2plus1d").card(rec, labels, shape))
    registry.backend("r2plus1d").save_untrained(run.file("best.keras"), rec, len(labels), shape)
    return Path(exporting.export(run)["path"])


def _files(folder: Path, n: int) -> list[Path]:
    videos = sorted(common.VIDEOS.glob("*.*"))
    out = []
    for i in range(n):
        src = videos[i % len(videos)]
        link = folder / "clips" / f"{i:03d}{src.suffix}"
        link.parent.mkdir(exist_ok=True)
        link.symlink_to(src)
        out.append(link)
    return out


def main() -> None:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--files", type=int, default=50, help="How many input files.")
    args = p.parse_args()
    started, load_before = time.time(), common.loadavg()
    from vidcli import inference

    with tempfile.TemporaryDirectory(prefix="bench-predict-") as tmp:
        folder = Path(tmp)
        path = _export(folder, args.quick)
        files = _files(folder, 6 if args.quick else args.files)
        repeat = 1 if args.quick else 3
        rows = {}
        for name, kw in (("sequential", {"batch": 1, "workers": 1}), ("parallel", {"batch": 8, "workers": 0})):
            model = inference.OnnxModel(path)
            times = common.time_calls(lambda m=model, kw=kw: list(inference.predict(m, files, **kw)), repeat)
            rows[name] = common.summary(times)
        one = {}
        for threads in (0, 1):
            model = inference.OnnxModel(path, threads)
            x = model.card.preprocess(inference.load_input(files[0], model.card, 1))
            one[threads] = common.summary(common.time_calls(lambda m=model, x=x: m(x), 5 if args.quick else 20, 2))
    speedup = rows["sequential"]["median"] / rows["parallel"]["median"]
    metrics = [
        common.metric(f"predict {len(files)} files: parallel decode + batch 8 vs one at a time", speedup, "x",
                      note=f"{rows['parallel']['median']:.2f} s vs {rows['sequential']['median']:.2f} s"),
        common.metric("one clip, ONNX Runtime 1 thread", one[1]["median"] * 1000, "ms"),
        common.metric("one clip, ONNX Runtime default threads", one[0]["median"] * 1000, "ms"),
    ]
    details = {"files": len(files), "runs": rows, "one_clip": {"default": one[0], "1_thread": one[1]}}
    common.emit(common.document("predict", metrics, details, args.quick, load_before, started), args.out)


if __name__ == "__main__":
    main()
