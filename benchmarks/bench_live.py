"""Live-stream latency of `vidcli predict`: from a frame leaving the decoder to its JSON line being written.

FFmpeg (imageio-ffmpeg's binary) sends the test video Megamind.avi (720x528, 23.98 fps) in real time (`-re`,
looped) as MPEG-2 in MPEG-TS over UDP to 127.0.0.1; vidcli's live reader (`vidcli.video.live`, a decoding thread
and a small drop-oldest buffer) and `vidcli.live.LiveClassifier` classify it as `predict --json` does, and each
line goes to /dev/null. Latency = time of the line's flush minus the time the newest frame the prediction saw was
decoded (network and decoding before that are not in it); the first two predictions (the stream's opening burst)
are left out. Models: random weights at the recipes' shapes, exported to ONNX first: the clip model is
`recipes/r2plus1d_ucf101.yaml`'s (2+1)D ResNet (10 frames 2 apart at 224x224: window 19 frames, a prediction every
9 by default), the stream model `recipes/movinet_a0_stream.yaml`'s MoViNet-A0 stream (172x172, every 5th frame).
Beside each: the model call inside that prediction, timed as it runs. `--quick`: 4-frame 32x32 models, 4 s.

    python benchmarks/bench_live.py [--quick] [--out FILE] [--seconds 20] [--models DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

sys.path.insert(1, str(common.REPO))  # this checkout's vidcli, whichever one the environment installed
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
VIDEO = common.VIDEOS / "Megamind.avi"
SHAPES = {  # name -> (model, frames, frame_step, size)
    "clip": ({"arch": "r2plus1d", "params": {"filters": [16, 32, 64, 128]}}, 10, 2, 224),
    "stream": ({"arch": "movinet", "params": {"model_id": "a0", "causal": True}}, 8, 5, 172),
}
QUICK = {"clip": 4, "stream": 4}  # frames at 32x32, frame_step 2


def export_models(out: Path, quick: bool) -> None:
    """clip.onnx and stream.onnx with random weights (run in a child process: TensorFlow stays out of the
    process that measures)."""
    import numpy as np

    from vidcli import recipe
    from vidcli.backends import registry
    from vidcli.exporting import export_model

    for name, (model, frames, step, size) in SHAPES.items():
        if quick:
            frames, step, size = QUICK[name], 2, 32
        rec = recipe.parse({"name": name, "model": model, "data": {"root": str(out / "none"), "frames": frames,
                                                                   "frame_step": step, "size": [size, size]}})
        spec, backend = registry.spec(rec.model.arch), registry.backend(rec.model.arch)
        shape = (frames, size, size, 3)
        card = spec.card(rec, [f"class{i}" for i in range(10)], shape)
        clips = np.random.default_rng(0).integers(0, 256, (1, *shape), dtype=np.uint8)
        common.log(f"exporting the {name} model {shape}")
        export_model(backend, backend.build(rec, 10, shape), card, clips, "random clips", out / f"{name}.onnx",
                     17, 1e-3, stream=spec.is_stream(registry.check_recipe(rec)))


def free_udp_url() -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return f"udp://127.0.0.1:{s.getsockname()[1]}"


class Timed:
    """The model with each call timed, so every prediction's latency is set beside its own model time."""

    def __init__(self, model):
        self.model, self.card, self.times = model, model.card, []

    def __call__(self, x):
        t0 = time.perf_counter()
        out = self.model(x)
        self.times.append(time.perf_counter() - t0)
        return out

    def initial_states(self):
        return self.model.initial_states()

    def step(self, frame, states):
        t0 = time.perf_counter()
        out = self.model.step(frame, states)
        self.times.append(time.perf_counter() - t0)
        return out


def live_latency(model_path: Path, stream: bool, seconds: float) -> dict:
    import imageio_ffmpeg
    import numpy as np

    from vidcli import live, models
    from vidcli.video.live import FfmpegSource

    choice = models.resolve(model_path)
    model = Timed(models.open_stream(choice) if stream else models.open_model(choice))
    url = free_udp_url()
    clf = live.LiveClassifier(model, stream=stream, name=str(model_path), source=url)
    clf.warm_up()
    model.times.clear()
    sender = subprocess.Popen([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-nostdin",
                               "-re", "-stream_loop", "-1", "-i", str(VIDEO), "-an", "-c:v", "mpeg2video", "-g", "12",
                               "-q:v", "4", "-f", "mpegts", f"{url}?pkt_size=1316"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latencies, started = [], time.monotonic()
    try:
        with open(os.devnull, "w") as sink, clf.reader(FfmpegSource(url), timeout=10, reconnect=0,
                                                       warn=common.log) as reader:
            for p in clf.predictions(reader, duration=seconds):
                sink.write(json.dumps(p.record()) + "\n")
                sink.flush()
                latencies.append(time.monotonic() - p.arrived)
            elapsed = time.monotonic() - started
    finally:
        sender.kill()
        sender.wait()
    skip = 2 if len(latencies) > 4 else 0  # the opening burst
    steady = np.asarray(latencies[skip:]) * 1000
    calls = np.asarray(model.times[skip : len(latencies)]) * 1000
    return {"model": str(model_path), "shape": list(clf.card.clip_shape), "frame_step": clf.card.frame_step,
            "window": None if stream else clf.window, "stride": clf.stride, "seconds": round(elapsed, 2),
            "frames": reader.frames, "dropped": reader.dropped, "predictions": len(latencies),
            "latency_ms": _stats(steady), "model_call_ms": _stats(calls), "besides_model_ms": _stats(steady - calls),
            "summary": live.summary(reader, len(latencies), started)}


def _stats(ms) -> dict:
    import numpy as np

    return {"median": float(np.median(ms)), "p90": float(np.percentile(ms, 90)), "max": float(ms.max()), "n": len(ms)}


def main() -> None:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=None, help="Stream seconds per model (default 20; quick 4).")
    p.add_argument("--models", type=Path, default=None, help="A folder with clip.onnx and stream.onnx to use "
                   "instead of exporting them.")
    p.add_argument("--export-only", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.export_only:
        export_models(args.export_only, args.quick)
        return
    quick, started, load_before = args.quick, time.time(), common.loadavg()
    seconds = args.seconds or (4.0 if quick else 20.0)
    with tempfile.TemporaryDirectory(prefix="bench-live-") as tmp:
        folder = args.models
        if folder is None:
            folder = Path(tmp)
            quick_flag = ["--quick"] if quick else []
            common.run_process([sys.executable, __file__, "--export-only", str(folder), *quick_flag], timeout=1800)
        details, metrics = {"video": VIDEO.name, "seconds": seconds}, []
        for name in ("clip", "stream"):
            common.log(f"{name} model on a live UDP stream for {seconds:g} s")
            r = live_latency(folder / f"{name}.onnx", name == "stream", seconds)
            common.log(r["summary"])
            details[name] = r
            how = f"window {r['window']}, stride {r['stride']}" if r["window"] else f"every {r['frame_step']} frames"
            what = f"{name} model ({how})"
            lat = r["latency_ms"]
            metrics += [
                common.metric(f"live {what}: frame in -> JSON line, median", lat["median"], "ms",
                              note=f"model call {r['model_call_ms']['median']:.1f} ms; the rest "
                                   f"{r['besides_model_ms']['median']:.1f} ms"),
                common.metric(f"live {what}: frame in -> JSON line, p90", lat["p90"], "ms"),
                common.metric(f"live {what}: frames dropped", r["dropped"], "frames",
                              note=f"of {r['frames']} frames taken; {r['predictions']} predictions"),
            ]
    common.emit(common.document("live", metrics, details, quick, load_before, started), args.out)


if __name__ == "__main__":
    main()
