"""Stream models per frame with ONNX Runtime alone: online TSM-MobileNetV2 beside MoViNet-A0 stream, in one run.

Both exported through vidcli's own stream export (`Backend.export_stream`: one frame and the states in, logits
and the next states out), fed random frames with their states carried, batch 1, timed with ONNX Runtime's
default thread pool and with 1 thread (what `predict --stream` uses). Online TSM at 224x224 (the demo's size;
the official demo reports 13 ms a frame on a Jetson Nano with TVM), MoViNet-A0 at 172x172 (its release size).
Random weights: speed does not depend on them.

    python benchmarks/bench_stream.py [--quick] [--out FILE] [--frames 100]
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def _card(size: int, classes: int, layout: str):
    from vidcli.modelcard import ModelCard

    return ModelCard(labels=[str(i) for i in range(classes)], frames=8, size=(size, size), layout=layout)


def _time(raw: bytes, spec, frame_shape: tuple[int, ...], frames: int, threads: int) -> dict:
    import numpy as np
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    session = ort.InferenceSession(raw, opts, providers=["CPUExecutionProvider"])
    frame = np.random.default_rng(0).random(frame_shape, dtype=np.float32)
    wanted = ["logits", *(s.output for s in spec.states)]
    state = {"values": {s.name: np.zeros(s.shape, dtype=s.dtype) for s in spec.states}}

    def step() -> None:
        values = session.run(wanted, {spec.input: frame, **state["values"]})
        state["values"] = {s.name: v for s, v in zip(spec.states, values[1:], strict=True)}

    return common.summary(common.time_calls(step, frames, warmup=5))


def tsm_online(size: int, frames: int) -> dict:
    import torch

    from vidcli.backends.torch import tsm, tsm_online
    from vidcli.families.tsm import TsmParams

    torch.manual_seed(0)
    model = tsm.build(TsmParams(backbone="mobilenet_v2", online=True), 27).eval()
    raw, spec = tsm_online.stream_onnx(model, _card(size, 27, "N(TC)HW"), 17)
    return {"model": "TSM-MobileNetV2 online", "size": size, "states": len(spec.states), "classes": 27,
            "per_frame_s": _time(raw, spec, (1, 3, size, size), frames, 0),
            "per_frame_1_thread_s": _time(raw, spec, (1, 3, size, size), frames, 1)}


def movinet_a0(size: int, frames: int) -> dict:
    from vidcli.backends.keras import movinet, movinet_stream

    model = movinet.build(movinet.MovinetParams(model_id="a0", causal=True), 600, (None, size, size, 3))
    raw, spec = movinet_stream.stream_onnx(model, _card(size, 600, "NTHWC"), 17)
    return {"model": "MoViNet-A0 stream", "size": size, "states": len(spec.states), "classes": 600,
            "per_frame_s": _time(raw, spec, (1, 1, size, size, 3), frames, 0),
            "per_frame_1_thread_s": _time(raw, spec, (1, 1, size, size, 3), frames, 1)}


def main() -> None:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=100, help="Timed frames per model and thread setting.")
    args = p.parse_args()
    started, load_before = time.time(), common.loadavg()
    frames = 10 if args.quick else args.frames
    rows = [tsm_online(64 if args.quick else 224, frames), movinet_a0(32 if args.quick else 172, frames)]
    metrics = []
    for r in rows:
        for key, how in (("per_frame_1_thread_s", "1 thread"), ("per_frame_s", "default threads")):
            ms = r[key]["median"] * 1000
            metrics.append(common.metric(f"{r['model']}, ORT per frame ({how})", ms, "ms",
                                         note=f"{r['size']}x{r['size']}, {r['states']} states, min "
                                              f"{r[key]['min'] * 1000:.1f} ms"))
    common.emit(common.document("stream", metrics, {"models": rows}, args.quick, load_before, started), args.out)


if __name__ == "__main__":
    main()
