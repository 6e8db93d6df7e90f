"""MoViNet numbers: stream latency per frame and base clip latency with ONNX Runtime, parameter counts,
and the fine-tuning step throughput of the tutorial's frozen-backbone A0.

Latency: the ONNX files `vidcli export-onnx` writes (stream: one frame per call with its states carried;
base: the whole clip in one call), on the CPU with ONNX Runtime's default thread pool, random input and
freshly initialised weights (speed does not depend on them). Stream A0-A2 at 172x172 (A0 target: <= 16 ms
a frame); base A0 on a 50x172x172 clip. Parameter counts: A0-A5 base with the 600 Kinetics classes.
Fine-tuning: `recipes/movinet_a0.yaml`'s model and optimizer (frozen backbone, Adam 1e-3, batch 8 of
8x224x224 clips), one `train_on_batch` per step.

    python benchmarks/bench_movinet.py [--quick] [--out FILE] [--stream a0,a1,a2] [--frames 50]
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
STREAM_TARGET_MS = 16.0


def _session(data: bytes, threads: int = 0):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])


def stream_latency(model_id: str, size: int, frames: int) -> dict:
    import numpy as np

    from vidcli.backends.keras import movinet, movinet_stream
    from vidcli.modelcard import ModelCard

    model = movinet.build(movinet.MovinetParams(model_id=model_id, causal=True), 600, (None, size, size, 3))
    card = ModelCard(labels=[str(i) for i in range(600)], frames=1, size=(size, size))
    t0 = time.perf_counter()
    raw, spec = movinet_stream.stream_onnx(model, card)
    specs = spec.states
    export_s = time.perf_counter() - t0
    frame = np.random.default_rng(0).random((1, 1, size, size, 3), dtype=np.float32)
    wanted = ["logits", *(s.output for s in specs)]
    timings = {}
    for threads in (0, 1):  # ONNX Runtime's default pool (what predict uses), and one core as the reference quotes
        session = _session(raw, threads)
        state = {"values": {s.name: np.zeros(s.shape, dtype=s.dtype) for s in specs}}

        def step(session=session, state=state):
            values = session.run(wanted, {spec.input: frame, **state["values"]})
            state["values"] = {s.name: v for s, v in zip(specs, values[1:], strict=True)}

        timings[threads] = common.summary(common.time_calls(step, frames, warmup=5))
    return {"model": f"{model_id} stream", "size": size, "states": len(specs), "onnx_mb": round(len(raw) / 2**20, 2),
            "export_s": round(export_s, 1), "per_frame_s": timings[0], "per_frame_1_thread_s": timings[1]}


def base_latency(size: int, frames: int, repeat: int) -> dict:
    import numpy as np

    from vidcli.backends.keras import movinet

    model = movinet.build(movinet.MovinetParams(), 600, (frames, size, size, 3))
    x = np.random.default_rng(0).random((1, frames, size, size, 3), dtype=np.float32)
    model(x)
    with tempfile.TemporaryDirectory(prefix="bench-movinet-") as tmp:
        path = Path(tmp) / "base.onnx"
        t0 = time.perf_counter()
        model.export(str(path), format="onnx", verbose=False, opset_version=17)
        export_s = time.perf_counter() - t0
        session = _session(path.read_bytes())
    name = session.get_inputs()[0].name
    times = common.time_calls(lambda: session.run(None, {name: x}), repeat, warmup=1)
    return {"model": "a0 base", "clip": [frames, size, size, 3], "export_s": round(export_s, 1),
            "per_clip_s": common.summary(times)}


def parameter_counts(model_ids: list[str]) -> dict[str, int]:
    from vidcli.backends.keras import movinet

    counts = {}
    for model_id in model_ids:
        counts[model_id] = int(movinet.build(movinet.MovinetParams(model_id=model_id), 600, (None, None, None, 3))
                               .count_params())
        common.log(f"movinet {model_id} base: {counts[model_id]:,} parameters")
    return counts


def finetune_throughput(frames: int, size: int, batch: int, steps: int) -> dict:
    import numpy as np

    from vidcli import recipe as recipe_mod
    from vidcli.backends.keras import backend, movinet

    rec = recipe_mod.load(common.REPO / "recipes" / "movinet_a0.yaml")
    params = movinet.MovinetParams.from_mapping(rec.model.params)
    model = movinet.build(params, 10, (frames, size, size, 3))
    backend.compile_model(model, rec.train)
    rng = np.random.default_rng(0)
    x = rng.random((batch, frames, size, size, 3), dtype=np.float32)
    y = rng.integers(0, 10, batch)
    times = common.time_calls(lambda: model.train_on_batch(x, y), steps, warmup=1)
    med = common.summary(times)["median"]
    return {"clip": [frames, size, size, 3], "batch": batch, "trainable_params": int(
        sum(np.prod(w.shape) for w in model.trainable_weights)), "per_step_s": common.summary(times),
        "clips_per_s": batch / med}


def movinet_ids() -> tuple[str, ...]:
    from vidcli.backends.keras.movinet import MODEL_IDS

    return MODEL_IDS


def main() -> None:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--stream", default="a0,a1,a2", help="Stream models to time (comma-separated).")
    p.add_argument("--frames", type=int, default=50, help="Frames of the base clip.")
    p.add_argument("--parts", default="stream,base,params,finetune", help="Which measurements to run.")
    args = p.parse_args()
    started, load_before = time.time(), common.loadavg()
    quick = args.quick
    size = 32 if quick else 172
    stream_ids = ["a0"] if quick else [s.strip() for s in args.stream.split(",") if s.strip()]

    parts = set(args.parts.split(","))
    metrics: list[dict] = []
    details: dict = {}
    if "stream" in parts:
        details["stream"] = []
        for model_id in stream_ids:
            common.log(f"movinet {model_id} stream at {size}x{size}: exporting and timing")
            s = stream_latency(model_id, size, 10 if quick else 100)
            details["stream"].append(s)
            is_a0 = model_id == "a0"
            for key, how in (("per_frame_s", "default threads"), ("per_frame_1_thread_s", "1 thread")):
                ms = s[key]["median"] * 1000
                metrics.append(common.metric(
                    f"MoViNet-{model_id.upper()} stream, ORT per frame ({how})", ms, "ms",
                    f"<= {STREAM_TARGET_MS:g} ms" if is_a0 else "", (ms <= STREAM_TARGET_MS) if is_a0 else None,
                    f"{size}x{size}, batch 1, {s['states']} states; min {s[key]['min'] * 1000:.1f} ms"))
    if "base" in parts:
        common.log("movinet a0 base clip: exporting and timing")
        base = details["base"] = base_latency(size, 4 if quick else args.frames, 2 if quick else 5)
        metrics.append(common.metric("MoViNet-A0 base, ORT per clip", base["per_clip_s"]["median"] * 1000, "ms",
                                     note="x".join(map(str, base["clip"][:3])) + ", batch 1"))
    if "params" in parts:
        counts = details["parameters"] = parameter_counts(["a0", "a1"] if quick else list(movinet_ids()))
        for model_id, n in counts.items():
            metrics.append(common.metric(f"MoViNet-{model_id.upper()} base parameters", n / 1e6, "M",
                                         note="600 classes"))
    if "finetune" in parts:
        common.log("fine-tuning step of the frozen-backbone A0")
        tune = details["finetune"] = finetune_throughput(*((4, 32, 2, 2) if quick else (8, 224, 8, 5)))
        metrics.append(common.metric("MoViNet-A0 frozen-backbone fine-tuning", tune["clips_per_s"], "clips/s",
                                     note=f"batch {tune['batch']} of " + "x".join(map(str, tune["clip"][:3]))))
    common.emit(common.document("movinet", metrics, details, quick, load_before, started), args.out)


if __name__ == "__main__":
    main()
