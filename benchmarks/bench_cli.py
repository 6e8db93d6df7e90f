"""Start-up latency of the command line: `vidcli --help`, and `vidcli predict` through ONNX vs Keras.

Every timing is a fresh process, as a user runs it, after one untimed warm-up run (so the OS file
cache is warm for both sides). The quickstart model is trained for one epoch when no `--model` is
given: its accuracy is irrelevant here, only its architecture decides the cost.

    python benchmarks/bench_cli.py [--quick] [--out FILE] [--model RUN_FOLDER]
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

HELP_TARGET_S = 0.5
PREDICT_TARGET_S = 1.5
ONNX_SPEEDUP_TARGET = 4.0
FRAMEWORKS = ("tensorflow", "torch", "keras", "jax")
QUICK_OVERRIDES = [
    "data.synth.classes=2", "data.synth.train=2", "data.synth.val=1", "data.synth.test=1",
    "data.synth.frames=8", "data.synth.size=32", "data.frames=4", "data.size=[32,32]",
    "model.params.filters=[4,4,8,8]", "model.params.norm=layer", "train.batch_size=2",
]


def vidcli_argv() -> list[str]:
    """The installed console script when there is one (what users run), else `python -m vidcli`."""
    script = Path(sys.executable).with_name("vidcli")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "vidcli"]


def time_to_json(argv: list[str]) -> tuple[float, float, dict]:
    """(seconds from spawn to the first stdout line, seconds to exit, that line parsed as JSON)."""
    with tempfile.TemporaryFile() as errfile:
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=errfile, text=True)
        line = proc.stdout.readline()
        t_json = time.perf_counter() - t0
        proc.stdout.read()
        rc = proc.wait()
        t_exit = time.perf_counter() - t0
        if rc != 0 or not line.strip():
            errfile.seek(0)
            tail = errfile.read().decode(errors="replace").strip().splitlines()[-5:]
            raise RuntimeError(f"{' '.join(argv)} exited {rc}: {' | '.join(tail)}")
    return t_json, t_exit, json.loads(line)


def repeat_predict(argv: list[str], n: int, warmup: int = 1) -> dict:
    for _ in range(warmup):
        time_to_json(argv)
    runs = [time_to_json(argv) for _ in range(n)]
    out = common.summary([r[0] for r in runs])
    out["exit"] = common.summary([r[1] for r in runs])
    out["result"] = runs[-1][2]
    return out


_IMPORT_LINE = re.compile(r"import time:\s+(\d+)\s+\|\s+(\d+)\s+\|(\s*)(\S+)")


def import_profile(argv: list[str], top: int = 12) -> dict:
    """`python -X importtime ARGV`, parsed: see `parse_importtime`."""
    proc = subprocess.run([sys.executable, "-X", "importtime", *argv], capture_output=True, text=True, timeout=600)
    return {"returncode": proc.returncode, **parse_importtime(proc.stderr, top)}


def parse_importtime(stderr: str, top: int = 12) -> dict:
    """Total import time, the worst modules by self and cumulative time, and whether a deep-learning
    framework was imported at all (the house rule for --help and ONNX predict)."""
    rows = []
    for line in stderr.splitlines():
        m = _IMPORT_LINE.match(line)
        if m:
            self_us, cum_us, indent, name = int(m[1]), int(m[2]), len(m[3]) - 1, m[4]
            rows.append({"module": name, "self_ms": self_us / 1000, "cumulative_ms": cum_us / 1000,
                         "depth": indent // 2})
    top_level = [r for r in rows if r["depth"] == 0]
    frameworks = sorted({r["module"].split(".")[0] for r in rows if r["module"].split(".")[0] in FRAMEWORKS})
    return {
        "modules": len(rows),
        "total_ms": round(sum(r["cumulative_ms"] for r in top_level), 1),
        "frameworks_imported": frameworks,
        "top_cumulative": sorted(top_level, key=lambda r: -r["cumulative_ms"])[:top]
        + sorted([r for r in rows if r["depth"] == 1], key=lambda r: -r["cumulative_ms"])[:top],
        "top_self": sorted(rows, key=lambda r: -r["self_ms"])[:top],
    }


def train_model(workdir: Path, quick: bool, extra_sets: list[str]) -> Path:
    cli = vidcli_argv()
    sets = ["train.epochs=1", f"data.root={workdir / 'synth'}"] + (QUICK_OVERRIDES if quick else []) + extra_sets
    argv = [*cli, "train", str(common.REPO / "recipes" / "quickstart.yaml"), "--runs-dir", str(workdir / "runs"),
            "--json"]
    for s in sets:
        argv += ["--set", s]
    common.log("training the quickstart model for timing: " + " ".join(argv))
    _, out, _ = common.run_process(argv)
    return Path(json.loads(out.strip().splitlines()[-1])["run"])


def ensure_onnx(run: Path) -> Path:
    onnx_file = run / "model.onnx"
    if not onnx_file.is_file():
        common.log(f"exporting {run} to ONNX")
        common.run_process([*vidcli_argv(), "export-onnx", str(run), "--json"])
    return onnx_file


def keras_only_copy(run: Path, dest: Path) -> Path:
    """The same run without model.onnx, so predict falls back to the Keras model (the original is left alone)."""
    shutil.copytree(run, dest, ignore=shutil.ignore_patterns("model.onnx", "tensorboard", "*.png"))
    return dest


def main() -> None:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, default=None, help="A trained run folder to time (default: train quickstart).")
    p.add_argument("--video", type=Path, default=common.VIDEOS / "Megamind.avi")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="Recipe override for the model trained here (repeatable), e.g. model.params.norm=layer.")
    args = p.parse_args()
    started, load_before = time.time(), common.loadavg()
    n_help, n_predict = (3, 2) if args.quick else (10, 5)
    cli = vidcli_argv()
    if not args.video.is_file():
        raise SystemExit(f"{args.video}: video not found")

    common.log(f"timing {n_help} x `vidcli --help`")
    help_times = common.time_calls(lambda: common.run_process([*cli, "--help"]), n_help)
    help_s = common.summary(help_times)
    imports_help = import_profile(["-c", "import vidcli.cli.main"])

    with tempfile.TemporaryDirectory(prefix="vidcli-bench-cli-") as tmp:
        t0 = time.perf_counter()
        run = args.model.resolve() if args.model else train_model(Path(tmp), args.quick, args.sets)
        t1 = time.perf_counter()
        onnx_file = ensure_onnx(run)
        stages = {"train_s": round(t1 - t0, 2), "export_s": round(time.perf_counter() - t1, 2)}
        keras_run = keras_only_copy(run, Path(tmp) / "keras_run")
        predict_onnx = [*cli, "predict", str(args.video), "--model", str(onnx_file), "--json"]
        predict_keras = [*cli, "predict", str(args.video), "--model", str(keras_run), "--json"]
        common.log(f"timing {n_predict} x predict with ONNX")
        onnx_s = repeat_predict(predict_onnx, n_predict)
        common.log("timing predict with Keras")
        keras_s = repeat_predict(predict_keras, 1 if args.quick else n_predict, 0 if args.quick else 1)
        imports_predict = import_profile(["-m", "vidcli", *predict_onnx[len(cli):]])
        overrides = [] if args.model else (QUICK_OVERRIDES if args.quick else []) + args.sets
        model_info = {"run": str(run), "onnx_bytes": onnx_file.stat().st_size, "recipe_overrides": overrides,
                      **stages}

    speedup = keras_s["median"] / onnx_s["median"]
    no_fw_help = not imports_help["frameworks_imported"]
    no_fw_predict = not imports_predict["frameworks_imported"]
    metrics = [
        common.metric("vidcli --help", help_s["median"], "s", f"< {HELP_TARGET_S:g} s",
                      help_s["median"] < HELP_TARGET_S, f"median of {n_help} fresh processes"),
        common.metric("predict (ONNX), start to JSON", onnx_s["median"], "s", f"< {PREDICT_TARGET_S:g} s",
                      onnx_s["median"] < PREDICT_TARGET_S, f"median of {n_predict}; {args.video.name}"),
        common.metric("predict (Keras), start to JSON", keras_s["median"], "s", "", None,
                      f"median of {keras_s['n']}; {args.video.name}"),
        common.metric("predict Keras / ONNX", speedup, "x", f">= {ONNX_SPEEDUP_TARGET:g}x",
                      speedup >= ONNX_SPEEDUP_TARGET),
        common.metric("import vidcli.cli.main", imports_help["total_ms"] / 1000, "s", "no DL framework", no_fw_help,
                      "-X importtime; frameworks: " + (", ".join(imports_help["frameworks_imported"]) or "none")),
        common.metric("predict --model x.onnx imports", imports_predict["total_ms"] / 1000, "s", "no DL framework",
                      no_fw_predict, "frameworks: " + (", ".join(imports_predict["frameworks_imported"]) or "none")),
    ]
    details = {
        "help": help_s,
        "predict_onnx": onnx_s,
        "predict_keras": keras_s,
        "commands": {"help": " ".join([*cli, "--help"]), "predict_onnx": " ".join(predict_onnx),
                     "predict_keras": " ".join(predict_keras)},
        "model": model_info,
        "importtime_help": imports_help,
        "importtime_predict_onnx": imports_predict,
    }
    common.emit(common.document("cli", metrics, details, args.quick, load_before, started), args.out)


if __name__ == "__main__":
    main()
