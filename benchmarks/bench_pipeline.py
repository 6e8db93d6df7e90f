"""Clips/s from video files to batched float tensors: vidcli's tf.data pipeline vs the TF tutorial's.

The baseline follows the design of TensorFlow's "Load video data" tutorial: a `FrameGenerator`
that decodes one clip at a time in a Python generator (seek with CAP_PROP_POS_FRAMES to a random
start, read every `frame_step`-th frame, convert and pad each frame with tf.image ops), wrapped in
`tf.data.Dataset.from_generator`, batched and prefetched. Both pipelines read the same files, at the
same clip shape and batch size, in the same process; each epoch is timed after an untimed warm-up
batch (graph tracing, codec start-up).

    python benchmarks/bench_pipeline.py [--quick] [--out FILE]
"""

from __future__ import annotations

import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import cv2  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

TARGET_RATIO = 3.0


def _format_frame(frame: np.ndarray, output_size: tuple[int, int]):
    import tensorflow as tf

    frame = tf.image.convert_image_dtype(frame, tf.float32)
    return tf.image.resize_with_pad(frame, *output_size)


def tutorial_frames(path: Path, n_frames: int, output_size: tuple[int, int], frame_step: int) -> np.ndarray:
    """The tutorial's per-clip reader. One guard added: a clip whose first read fails (a header that
    over-states its length, like tree.avi) gives zeros instead of crashing the epoch."""
    src = cv2.VideoCapture(str(path))
    length = src.get(cv2.CAP_PROP_FRAME_COUNT)
    need = 1 + (n_frames - 1) * frame_step
    start = 0 if need > length else random.randint(0, int(length - need) + 1)
    src.set(cv2.CAP_PROP_POS_FRAMES, start)
    ok, frame = src.read()
    first = _format_frame(frame, output_size) if ok else np.zeros((*output_size, 3), np.float32)
    result = [first]
    for _ in range(n_frames - 1):
        for _ in range(frame_step):
            ok, frame = src.read()
        result.append(_format_frame(frame, output_size) if ok else np.zeros_like(result[0]))
    src.release()
    return np.array(result)[..., [2, 1, 0]]


class FrameGenerator:
    """Yields (frames, label) for every clip under `path`/<class>/, shuffled when training."""

    def __init__(self, path: Path, n_frames: int, output_size: tuple[int, int], frame_step: int,
                 training: bool = False):
        self.path = path
        self.n_frames = n_frames
        self.output_size = output_size
        self.frame_step = frame_step
        self.training = training
        self.class_names = sorted(p.name for p in path.iterdir() if p.is_dir())
        self.class_ids = {name: i for i, name in enumerate(self.class_names)}

    def files(self) -> list[tuple[Path, str]]:
        return [(p, p.parent.name) for p in sorted(self.path.glob("*/*")) if p.is_file()]

    def __call__(self):
        pairs = self.files()
        if self.training:
            random.shuffle(pairs)
        for path, name in pairs:
            yield tutorial_frames(path, self.n_frames, self.output_size, self.frame_step), self.class_ids[name]


def baseline_dataset(split_dir: Path, frames: int, size: tuple[int, int], frame_step: int, batch: int):
    import tensorflow as tf

    signature = (tf.TensorSpec(shape=(None, None, None, 3), dtype=tf.float32), tf.TensorSpec(shape=(), dtype=tf.int16))
    gen = FrameGenerator(split_dir, frames, size, frame_step, training=True)
    return tf.data.Dataset.from_generator(gen, output_signature=signature).batch(batch).prefetch(tf.data.AUTOTUNE)


def _epoch(make) -> tuple[float, int, tuple]:
    """Build a fresh dataset and iterate it to the end: (seconds, clips, batch shape)."""
    t0 = time.perf_counter()
    clips, shape = 0, ()
    for batch in make():
        x = batch[0]
        clips += int(x.shape[0])
        shape = tuple(int(d) for d in x.shape)
    return time.perf_counter() - t0, clips, shape


def _warmup(make) -> None:
    for _ in make().take(1):
        pass


def measure(name: str, make, repeat: int) -> dict:
    _warmup(make)
    runs = [_epoch(make) for _ in range(repeat)]
    times = [r[0] for r in runs]
    clips = runs[0][1]
    rate = clips / float(np.median(times))
    common.log(f"  {name}: {clips} clips/epoch, median {np.median(times):.2f} s -> {rate:.2f} clips/s")
    return {"clips_per_epoch": clips, "batch_shape": list(runs[0][2]), "epoch_seconds": common.summary(times),
            "clips_per_s": rate}


def compare(label: str, root: Path, frames: int, frame_step: int, size: tuple[int, int], batch: int,
            repeat: int) -> dict:
    """Ours (train and eval pipelines) and the baseline over root/train."""
    from vidcli.backends.keras.data import eval_dataset, parallelism, train_dataset
    from vidcli.datasets.source import open_source
    from vidcli.recipe import DataConfig

    data = DataConfig(root=str(root), format="videos", frames=frames, frame_step=frame_step, size=size)
    src = open_source(data, "train")
    common.log(f"{label}: {len(src)} clips, {frames} frames step {frame_step} at {size[0]}x{size[1]}, batch {batch}")
    errors: list = []
    epochs = iter(range(10_000))

    def ours_train(workers: int = 0):
        e = next(epochs)  # a new epoch plan each time, as training would see
        return train_dataset(src, batch, 0, e, e + 1, workers)

    out = {
        "clips": len(src),
        "frames": frames,
        "frame_step": frame_step,
        "size": list(size),
        "batch": batch,
        "ours_train": measure("ours (train_dataset)", ours_train, repeat),
        "ours_train_1worker": measure("ours (train_dataset, 1 worker)", lambda: ours_train(1), repeat),
        "ours_eval": measure("ours (eval_dataset)", lambda: eval_dataset(src, batch, 0, errors), repeat),
        "tutorial": measure("tutorial (from_generator)",
                            lambda: baseline_dataset(root / "train", frames, size, frame_step, batch), repeat),
    }
    out["ratio_train"] = out["ours_train"]["clips_per_s"] / out["tutorial"]["clips_per_s"]
    out["ratio_eval"] = out["ours_eval"]["clips_per_s"] / out["tutorial"]["clips_per_s"]
    out["ratio_train_1worker"] = out["ours_train_1worker"]["clips_per_s"] / out["tutorial"]["clips_per_s"]
    out["workers"] = parallelism(0)
    out["load_errors"] = len(errors)
    return out


def real_videos(dest: Path, copies: int, names: list[str]) -> Path:
    """ROOT/train/<video stem>/<copy>.<ext>: each test video is one class."""
    videos = common.VIDEOS
    if not videos.is_dir():
        raise SystemExit(f"test videos not found at {videos}")
    for name in names:
        src = videos / name
        cls_dir = dest / "train" / src.stem
        cls_dir.mkdir(parents=True, exist_ok=True)
        for i in range(copies):
            shutil.copyfile(src, cls_dir / f"{src.stem}_{i}{src.suffix}")
    return dest


def main() -> None:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--copies", type=int, default=None, help="Copies of each test video (default 4, quick 1).")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--repeat", type=int, default=None, help="Timed epochs per pipeline (default 2, quick 1).")
    args = p.parse_args()
    started, load_before = time.time(), common.loadavg()
    repeat = args.repeat or (1 if args.quick else 2)
    copies = args.copies or (1 if args.quick else 4)
    names = ["Megamind.avi", "tree.avi"] if args.quick else ["Megamind.avi", "box.mp4", "tree.avi"]
    random.seed(0)

    from vidcli.datasets.synth import write_synth_videos

    details: dict = {}
    with tempfile.TemporaryDirectory(prefix="vidcli-bench-") as tmp:
        per_class = 2 if args.quick else 24
        synth = write_synth_videos(Path(tmp) / "synth", classes=2 if args.quick else 8,
                                   counts={"train": per_class, "val": 0, "test": 0}, frames=16, size=64, seed=0)
        details["synth"] = compare("synth", synth, 8, 2, (64, 64), args.batch, repeat)
        real = real_videos(Path(tmp) / "real", copies, names)
        details["real"] = compare("real", real, 10, 2, (224, 224), args.batch, repeat)
        details["real"]["videos"] = names
        details["real"]["copies"] = copies

    metrics = []
    for key, what in (("synth", "synthetic 64x64x8"), ("real", "test videos 224x224x10")):
        d = details[key]
        metrics += [
            common.metric(f"{key}: ours train clips/s", d["ours_train"]["clips_per_s"], "clips/s", note=what),
            common.metric(f"{key}: ours eval clips/s", d["ours_eval"]["clips_per_s"], "clips/s", note=what),
            common.metric(f"{key}: ours train, 1 worker, clips/s", d["ours_train_1worker"]["clips_per_s"], "clips/s",
                          note="per-clip cost without tf.data parallelism"),
            common.metric(f"{key}: tutorial clips/s", d["tutorial"]["clips_per_s"], "clips/s", note=what),
            common.metric(f"{key}: ours train / tutorial", d["ratio_train"], "x", f">= {TARGET_RATIO:g}x",
                          d["ratio_train"] >= TARGET_RATIO, f"{what}; {d['workers']} tf.data workers"),
        ]
    doc = common.document("pipeline", metrics, details, args.quick, load_before, started)
    common.emit(doc, args.out)


if __name__ == "__main__":
    main()
