"""Training throughput per model family and precision, at the real recipes' shapes: clips/s, step time and
peak memory, through each backend's own training step (Keras `fit` with the recipe's compile settings;
the TSM trainer's `step` with its autocast, loss scaling and channels-last).

Made for a GPU machine: `python benchmarks/bench_train.py` there records every family at float32,
mixed_float16 and mixed_bfloat16 and the speed-up of mixed precision over float32 (targets: (2+1)D
>= 1.8x, TSM-R50 with AMP and channels-last >= 2x). On a CPU only float32 and bfloat16 are meaningful
and the targets do not apply. Data is random and in memory: this measures the model, not decoding
(`vidcli benchmark --data` times the input pipeline). Each (family, precision) runs in a fresh process,
so precision policies and memory peaks never leak from one to the next.

    python benchmarks/bench_train.py [--quick] [--families r2plus1d,tsm] [--precisions float32,mixed_float16]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

RECIPES = {
    "r2plus1d": "recipes/r2plus1d_ucf101.yaml",
    "movinet": "recipes/movinet_a0.yaml",
    "vivit": "recipes/vivit_organmnist3d.yaml",
    "tsm": "recipes/tsm_r50_kinetics.yaml",
}
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
TARGETS = {"r2plus1d": 1.8, "tsm": 2.0}  # mixed precision / float32 clips/s on a GPU
QUICK = {  # --quick: a smoke run of the same code at toy sizes
    "r2plus1d": ["data.size=[32,32]", "data.frames=4", "train.batch_size=2", "model.params.filters=[4,8]"],
    "movinet": ["data.size=[32,32]", "data.frames=4", "train.batch_size=2"],
    "vivit": ["train.batch_size=2"],
    "tsm": ["data.size=[32,32]", "data.frames=4", "train.batch_size=2", "model.params.num_segments=4",
            "model.params.width=8", "model.params.layers=[1,1,1,1]"],
}
CLASSES = 10


def _recipe(family: str, precision: str, quick: bool):
    from vidcli import recipe as recipe_mod

    raw = recipe_mod.load_raw(common.REPO / RECIPES[family])
    raw.setdefault("model", {})["pretrained"] = None
    params = raw["model"].setdefault("params", {}) or {}
    raw["model"]["params"] = params
    for key in ("pretrained", "imagenet_init"):
        params.pop(key, None)
    sets = [f"train.precision={precision}", *(QUICK[family] if quick else [])]
    return recipe_mod.parse(recipe_mod.apply_overrides(raw, sets))


def _shape(rec) -> tuple[int, ...]:
    from vidcli.models import sample_shape

    return sample_shape(rec)


def _keras(rec, steps: int, warmup: int) -> dict:
    import keras
    import numpy as np
    import tensorflow as tf

    from vidcli.backends.keras import backend

    backend.setup(rec.train)
    shape = _shape(rec)
    model = backend.BACKEND.build(rec, CLASSES, shape)
    backend.compile_model(model, rec.train)
    bs = rec.train.batch_size
    rng = np.random.default_rng(0)
    x = tf.constant(rng.random((bs, *shape), dtype=np.float32))
    y = tf.constant(rng.integers(0, CLASSES, bs))
    ds = tf.data.Dataset.from_tensors((x, y, tf.ones(bs))).repeat()
    gpu = bool(tf.config.list_logical_devices("GPU"))
    model.fit(ds, epochs=1, steps_per_epoch=warmup, verbose=0)
    if gpu:
        tf.config.experimental.reset_memory_stats("GPU:0")
    t0 = time.perf_counter()
    model.fit(ds, epochs=1, steps_per_epoch=steps, verbose=0)  # fit returns after the last step finished
    seconds = time.perf_counter() - t0
    peak = tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20 if gpu else None
    name = tf.config.experimental.get_device_details(tf.config.list_physical_devices("GPU")[0]).get(
        "device_name", "GPU") if gpu else "cpu"
    return {"seconds": seconds, "peak_gpu_mib": peak, "device": name, "params": int(model.count_params()),
            "effective_precision": keras.mixed_precision.global_policy().name}


def _torch(rec, steps: int, warmup: int) -> dict:
    import numpy as np
    import torch

    from vidcli.backends.torch import backend

    class RandomClips:  # what the trainer reads of a Source when nothing is loaded from it
        classes = [str(i) for i in range(CLASSES)]
        labels = np.zeros(64, np.int64)
        sample_shape = _shape(rec)

        def __len__(self) -> int:
            return len(self.labels)

    backend.setup(rec.train)
    tr = backend._Trainer(None, rec, RandomClips(), None, backend.Comm())
    model = tr.place(backend.BACKEND.build(rec, CLASSES, _shape(rec)))
    opt = backend.optimizer(model, rec.train, tr.spec.head)
    model.train()
    bs = rec.train.batch_size
    gen = torch.Generator().manual_seed(0)
    clips = torch.randint(0, 256, (bs, *_shape(rec)), dtype=torch.uint8, generator=gen).to(tr.dev)
    y = torch.randint(0, CLASSES, (bs,), generator=gen).to(tr.dev)
    w = torch.ones(bs, device=tr.dev)
    cuda = tr.dev.type == "cuda"

    def run(n: int) -> None:
        for _ in range(n):
            tr.step(model, opt, clips, y, w, float(bs))
        if cuda:
            torch.cuda.synchronize()

    run(warmup)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    run(steps)
    seconds = time.perf_counter() - t0
    effective = {torch.float16: "mixed_float16", torch.bfloat16: "mixed_bfloat16"}.get(tr.amp, "float32")
    return {"seconds": seconds, "peak_gpu_mib": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
            "effective_precision": effective,
            "device": torch.cuda.get_device_name() if cuda else "cpu",
            "params": sum(p.numel() for p in model.parameters())}


def worker(family: str, precision: str, quick: bool, steps: int, warmup: int) -> dict:
    from vidcli.backends import registry

    rec = _recipe(family, precision, quick)
    backend = registry.backend_name(rec.model.arch)
    from vidcli.backends import quiet_import

    quiet_import("tensorflow" if backend == "keras" else "torch")
    got = (_keras if backend == "keras" else _torch)(rec, steps, warmup)
    bs = rec.train.batch_size
    return {"family": family, "precision": precision, "batch": bs, "input": list(_shape(rec)), **got,
            "step_ms": 1000 * got["seconds"] / steps, "clips_per_s": bs * steps / got["seconds"]}


def main() -> None:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--families", default=",".join(RECIPES))
    p.add_argument("--precisions", default=None, help="Default: all three on a GPU, float32 and bfloat16 on a CPU.")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--worker", nargs=2, metavar=("FAMILY", "PRECISION"), help=argparse_hidden())
    args = p.parse_args()
    steps = args.steps or (3 if args.quick else 20)
    warmup = 1 if args.quick else 5
    if args.worker:
        sys.stdout.write(json.dumps(worker(*args.worker, args.quick, steps, warmup)) + "\n")
        return
    started, load_before = time.time(), common.loadavg()
    from vidcli import runs

    gpus = runs.gpus()
    precisions = (args.precisions.split(",") if args.precisions
                  else list(PRECISIONS) if gpus else ["float32", "mixed_bfloat16"])
    rows, metrics = [], []
    for family in args.families.split(","):
        if family not in RECIPES:
            raise SystemExit(f"unknown family {family!r}; known: {', '.join(RECIPES)}")
        for precision in precisions:
            argv = [sys.executable, __file__, "--worker", family, precision, "--steps", str(steps)]
            argv += ["--quick"] if args.quick else []
            common.log(f"== {family} {precision}")
            try:
                _, out, _ = common.run_process(argv, env={**os.environ, "PYTHONUNBUFFERED": "1"}, timeout=1800)
                row = json.loads(out.strip().splitlines()[-1])
            except (RuntimeError, subprocess.TimeoutExpired, ValueError) as exc:
                row = {"family": family, "precision": precision, "error": str(exc)[-500:]}
            common.log(json.dumps(row))
            rows.append(row)
            if "clips_per_s" in row:
                metrics.append(common.metric(f"{family} {precision}: clips/s (batch {row['batch']}, "
                                             f"{row['device']})", row["clips_per_s"], "clips/s"))
        base = next((r for r in rows if r["family"] == family and r["precision"] == "float32"
                     and "clips_per_s" in r), None)
        for r in rows:
            if (base is None or r["family"] != family or r["precision"] == "float32" or "clips_per_s" not in r
                    or r.get("effective_precision") == "float32"):  # torch AMP on a CPU falls back to float32
                continue
            target = TARGETS.get(family) if gpus and not args.quick else None
            ratio = r["clips_per_s"] / base["clips_per_s"]
            metrics.append(common.metric(f"{family} {r['precision']} / float32", ratio, "x",
                                         f">= {target}x on a GPU" if target else "",
                                         (ratio >= target) if target else None))
    doc = common.document("train", metrics, {"rows": rows, "gpus": gpus, "steps": steps, "warmup": warmup},
                          args.quick, load_before, started)
    common.emit(doc, args.out)


def argparse_hidden() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
