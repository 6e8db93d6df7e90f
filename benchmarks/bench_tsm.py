"""TSM numbers: ONNX Runtime vs PyTorch eager inference, and (with --shift-proof) what the shift buys.

Inference: TSM ResNet-50, 8 segments of 224x224, random weights (speed does not depend on them), the same
batch through `torch` (eval, no_grad) and through the ONNX file `vidcli export-onnx` would write, both on
the CPU with their default thread pools. Target: ONNX Runtime >= 1.3x faster.

Shift proof: `recipes/tsm_quickstart.yaml` trained twice on the built-in motion data, with the temporal
shift and with `model.params.is_shift=false` (the same network without it), then evaluated on the test
split: top-1 and, for each direction pair (left/right, up/down, grow/shrink, cw/ccw), the accuracy of
telling its two classes apart (chance 0.5). Target: TSM >= 90% top-1; the no-shift network near 0.5 on pairs.

    python benchmarks/bench_tsm.py [--quick] [--out FILE] [--batch 1] [--shift-proof] [--data DIR]
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

SPEEDUP_TARGET = 1.3
TOP1_TARGET = 0.9
PAIRS = (("left", "right"), ("up", "down"), ("grow", "shrink"), ("clockwise", "counterclockwise"))


def inference(batch: int, quick: bool, repeat: int, threads: list[int] | None) -> tuple[list[dict], dict]:
    import numpy as np
    import onnxruntime as ort
    import torch

    from vidcli.backends.torch.backend import BACKEND
    from vidcli.backends.torch.tsm import TSM

    torch.manual_seed(0)
    if quick:
        model, shape = TSM(10, 4, width=8, layers=(1, 1, 1, 1), shift_div=4), (batch, 4, 3, 64, 64)
    else:
        model, shape = TSM(400, 8), (batch, 8, 3, 224, 224)
    model.eval()
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    xt = torch.from_numpy(x)
    data = BACKEND.export_onnx(model, x, 17)
    what = f"batch {batch} x {shape[1]}x{shape[3]}x{shape[4]}"
    metrics, details = [], {"shape": list(shape)}
    # Same thread count on both sides; on a busy machine OpenMP's spinning makes 2 threads far slower than 1.
    for n in sorted(set(threads or [torch.get_num_threads(), 1]), reverse=True):
        torch.set_num_threads(n)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = n
        session = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        with torch.no_grad():
            diff = float(np.abs(session.run(None, {name: x})[0] - model(xt).numpy()).max())
            t_torch = common.summary(common.time_calls(lambda: model(xt), repeat, warmup=1))
        t_ort = common.summary(common.time_calls(lambda s=session, n=name: s.run(None, {n: x}), repeat, warmup=1))
        speedup = t_torch["median"] / t_ort["median"]
        tag = f"{n} thread{'s' if n > 1 else ''}"
        metrics += [
            common.metric(f"TSM-R50 PyTorch eager, {tag}", t_torch["median"], "s", note=what),
            common.metric(f"TSM-R50 ONNX Runtime, {tag}", t_ort["median"], "s", note=what),
            common.metric(f"ONNX Runtime speed-up, {tag}", speedup, "x", f">= {SPEEDUP_TARGET}x",
                          speedup >= SPEEDUP_TARGET),
        ]
        details[tag] = {"max_abs_diff": diff, "torch_s": t_torch, "onnxruntime_s": t_ort}
    return metrics, details


def _pair_accuracy(logits, labels, classes: list[str]) -> dict[str, float]:
    out = {}
    for a, b in PAIRS:
        if a not in classes or b not in classes:
            continue
        ia, ib = classes.index(a), classes.index(b)
        rows = [k for k, y in enumerate(labels) if y in (ia, ib)]
        pred = [ia if logits[k, ia] >= logits[k, ib] else ib for k in rows]
        out[f"{a}/{b}"] = sum(p == labels[k] for p, k in zip(pred, rows, strict=True)) / max(len(rows), 1)
    return out


def shift_proof(data: Path | None, quick: bool) -> tuple[list[dict], dict]:
    from vidcli import evaluation, training

    recipe = common.REPO / "recipes" / "tsm_quickstart.yaml"
    details: dict = {"recipe": str(recipe.relative_to(common.REPO))}
    metrics = []
    with tempfile.TemporaryDirectory(prefix="bench-tsm-") as tmp:
        root = data or Path(tmp) / "synth"
        base = [f"data.root={root}"]
        if quick:
            base += ["train.epochs=1", "data.synth.train=2", "data.synth.val=1", "data.synth.test=2"]
        for shift in (True, False):
            label = "TSM" if shift else "no shift"
            t0 = time.perf_counter()
            run = training.train(recipe, base + [f"model.params.is_shift={str(shift).lower()}"], None,
                                 Path(tmp) / ("shift" if shift else "noshift"))
            seconds = time.perf_counter() - t0
            pred = evaluation.predictions(run, "test")
            top1 = float((pred["logits"].argmax(1) == pred["labels"]).mean())
            pairs = _pair_accuracy(pred["logits"], pred["labels"].tolist(), list(pred["classes"]))
            mean_pair = sum(pairs.values()) / max(len(pairs), 1)
            details[label] = {"top1": top1, "pairs": pairs, "train_seconds": round(seconds, 1),
                              "epochs": run.state.get("epochs_done"), "best_epoch": run.state.get("best_epoch")}
            common.log(f"{label}: test top-1 {top1:.3f}, pair accuracy {pairs}")
            target = f">= {TOP1_TARGET:.0%}" if shift else ""
            metrics.append(common.metric(f"{label}: test top-1", top1, "", target,
                                         top1 >= TOP1_TARGET if shift else None, f"{len(pred['labels'])} clips"))
            metrics.append(common.metric(f"{label}: direction-pair accuracy", mean_pair, "",
                                         "near 0.5 (chance)" if not shift else "", None, "mean over 4 pairs"))
    return metrics, details


def main() -> None:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=1, help="Clips per inference call.")
    p.add_argument("--repeat", type=int, default=None, help="Timed calls per side (default 5, quick 2).")
    p.add_argument("--threads", type=int, nargs="+", default=None,
                   help="Thread counts to compare at (default: torch's default and 1).")
    p.add_argument("--shift-proof", action="store_true", help="Also train TSM with and without the shift.")
    p.add_argument("--data", type=Path, default=None, help="Built-in synthetic data folder to reuse.")
    args = p.parse_args()
    started, load_before = time.time(), common.loadavg()
    metrics, details = inference(args.batch, args.quick, args.repeat or (2 if args.quick else 5), args.threads)
    details = {"inference": details}
    if args.shift_proof:
        m, d = shift_proof(args.data, args.quick)
        metrics += m
        details["shift_proof"] = d
    common.emit(common.document("tsm", metrics, details, args.quick, load_before, started), args.out)


if __name__ == "__main__":
    main()
