"""Inference in every format, through `vidcli benchmark`: the quickstart recipe's model ((2+1)D ResNet,
8 frames of 32x32, random weights) in Keras (one traced `training=False` graph) and in ONNX Runtime, on
the same random input, at batch 1 and 8, with each runtime's default thread pool and with one thread
(on a busy machine, threads that spin waiting for a core make the default far slower).

Target: ONNX Runtime's logits within the recipe's export tolerance (1e-4) of Keras'. The latencies and the
speed-up are measurements without a target.

    python benchmarks/bench_formats.py [--quick] [--out FILE] [--recipe R] [--batch 1,8] [--threads 0 1]
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from bench_cli import vidcli_argv  # noqa: E402

QUICK_OVERRIDES = ["data.frames=4", "data.size=[16,16]", "model.params.filters=[4,8]"]


def measure(args, threads: int) -> tuple[list[dict], dict]:
    argv = [*vidcli_argv(), "benchmark", str(args.recipe), "--batch", args.batch, "--json"]
    if args.quick:
        argv += ["--runs", "2", "--warmup", "1"] + [a for o in QUICK_OVERRIDES for a in ("--set", o)]
    else:
        argv += ["--runs", "20", "--warmup", "3"]
    if threads:
        argv += ["--threads", str(threads)]
    common.log(" ".join(argv[1:]))
    seconds, stdout, _ = common.run_process(argv)
    result = json.loads(stdout)
    model, rows = result["model"], result["rows"]
    tol, framework = model["tolerance"], model["backend"]
    shape = "x".join(map(str, model["input_shape"]))
    tag = f"{threads} thread{'s' if threads > 1 else ''}" if threads else "default threads"
    by = {(r["format"], r["batch"]): r for r in rows}
    metrics = [common.metric(f"{r['format']} batch {r['batch']} median, {tag}", r["median_ms"], "ms",
                             note=f"{model['arch']} {shape}, {r['clips_per_s']:.1f} clips/s") for r in rows]
    for (fmt, b), r in by.items():
        if fmt == "onnx" and (framework, b) in by:
            metrics.append(common.metric(f"ONNX Runtime speed-up over {framework}, batch {b}, {tag}",
                                         by[(framework, b)]["median_ms"] / r["median_ms"], "x"))
    worst = max(r["max_abs_diff"] for r in rows if r["format"] == "onnx")
    metrics.append(common.metric(f"max abs diff onnx vs {framework} logits, {tag}", worst, "", f"<= {tol:g}",
                                 worst <= tol, note=f"{worst:.2g}"))
    shown = " ".join(os.path.relpath(a, common.REPO) if a == str(args.recipe) else a for a in argv[1:])
    return metrics, {"benchmark_command": shown, "process_seconds": round(seconds, 2), "result": result}


def main() -> None:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--recipe", type=Path, default=common.REPO / "recipes" / "quickstart.yaml", help="Recipe to time.")
    p.add_argument("--batch", default="1,8", help="Batch sizes, comma-separated.")
    p.add_argument("--threads", type=int, nargs="+", default=None,
                   help="Thread counts to measure at, 0 = each runtime's default (default: 0 and 1; quick: 1).")
    args = p.parse_args()
    started, load_before = time.time(), common.loadavg()
    metrics, details = [], {}
    for threads in args.threads or ([1] if args.quick else [0, 1]):
        m, d = measure(args, threads)
        metrics += m
        details[f"threads_{threads or 'default'}"] = d
    common.emit(common.document("formats", metrics, details, args.quick, load_before, started), args.out)


if __name__ == "__main__":
    main()
