"""Ctrl-C at random moments of a real `vidcli train`: how often does the process end as it should?

Each trial starts `python -m vidcli train` on a tiny synthetic recipe (real video files decoded by
OpenCV inside tf.data), waits until the run folder exists, sleeps a random time, sends SIGINT and
records the exit code. A clean exit is code 130, one `error:` line on stderr and no traceback; anything
else (SIGABRT from a decode thread killed at shutdown: -6 or 134, SIGSEGV: -11 or 139, a hang) counts as a
failure. `--resume-check` also resumes every interrupted run for one more epoch.

    python benchmarks/stress_sigint.py [--n 40] [--max-delay 6] [--seed 0] [--out FILE]
"""

from __future__ import annotations

import collections
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

TIMEOUT_S = 120


def setup(root: Path, epochs: int, workers: int) -> Path:
    """Tiny data (3 classes of 32x32 moving shapes) and a recipe that trains for far longer than a trial."""
    from vidcli.datasets.synth import write_synth_videos

    data = write_synth_videos(root / "data", classes=3, counts={"train": 12, "val": 3, "test": 1}, frames=12,
                              size=32, workers=2)
    recipe = {
        "name": "tiny",
        "data": {"root": str(data), "frames": 4, "frame_step": 2, "size": [32, 32], "workers": workers},
        "model": {"arch": "r2plus1d", "params": {"filters": [4, 8]}},
        "train": {"epochs": epochs, "batch_size": 6, "learning_rate": 0.003, "seed": 0, "tensorboard": False},
    }
    path = root / "tiny.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    return path


def env() -> dict[str, str]:
    out = dict(os.environ)
    out["PYTHONPATH"] = str(common.REPO) + os.pathsep + out.get("PYTHONPATH", "")
    out.pop("VIDCLI_DEBUG", None)
    return out


def clean_exit(rc: int | None, stderr: str) -> bool:
    lines = [line for line in stderr.splitlines() if line.startswith("error: ")]
    return rc == 130 and len(lines) == 1 and "interrupted" in lines[0] and "Traceback" not in stderr


def trial(recipe: Path, runs_dir: Path, delay: float) -> dict:
    """One run, interrupted `delay` seconds after its run folder appeared."""
    argv = [sys.executable, "-m", "vidcli", "train", str(recipe), "--runs-dir", str(runs_dir)]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env())
    state = runs_dir / "tiny" / "1" / "run.json"
    t0 = time.monotonic()
    while proc.poll() is None and not state.is_file() and time.monotonic() - t0 < TIMEOUT_S:
        time.sleep(0.02)
    time.sleep(delay)
    sent = proc.poll() is None
    checkpoint = (state.parent / "last.keras").is_file()
    if sent:
        proc.send_signal(signal.SIGINT)
    try:
        _, stderr = proc.communicate(timeout=TIMEOUT_S)
        rc: int | None = proc.returncode
    except subprocess.TimeoutExpired:
        proc.kill()
        _, stderr = proc.communicate()
        rc = None
    tail = [line for line in stderr.splitlines() if line.strip()][-3:]
    return {"delay": round(delay, 3), "signal_sent": sent, "checkpoint_at_signal": checkpoint, "rc": rc,
            "clean": clean_exit(rc, stderr),
            "tail": tail, "seconds": round(time.monotonic() - t0, 2)}


def resumable(run: Path) -> bool:
    """The interrupted run trains one more epoch from its checkpoint."""
    import json

    done = json.loads((run / "run.json").read_text()).get("epochs_done", 0)
    argv = [sys.executable, "-m", "vidcli", "train", "--resume", str(run), "--set", f"train.epochs={done + 1}"]
    proc = subprocess.run(argv, capture_output=True, text=True, env=env(), timeout=600)
    return proc.returncode == 0


def main() -> None:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=40, help="Trials (default 40).")
    p.add_argument("--max-delay", type=float, default=6.0, help="Latest SIGINT after the run folder appears (s).")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=0, help="data.workers of the recipe (0: tf.data's default).")
    p.add_argument("--resume-check", action="store_true", help="Resume every interrupted run for one epoch.")
    args = p.parse_args()
    n = 2 if args.quick else args.n
    started, load_before = time.time(), common.loadavg()
    rng = random.Random(args.seed)
    trials = []
    with tempfile.TemporaryDirectory(prefix="vidcli-sigint-") as tmp:
        recipe = setup(Path(tmp), epochs=1000, workers=args.workers)
        for i in range(n):
            runs_dir = Path(tmp) / f"runs{i}"
            t = trial(recipe, runs_dir, rng.uniform(0.0, args.max_delay))
            run = runs_dir / "tiny" / "1"
            if args.resume_check and t["clean"] and (run / "last.keras").is_file():
                t["resumed"] = resumable(run)
            trials.append(t)
            common.log(f"[{i + 1}/{n}] delay {t['delay']:.2f}s  rc {t['rc']}  {'ok' if t['clean'] else 'FAIL'}"
                       + ("" if t["clean"] else f"  {t['tail'][-1:] or ''}"))
    hist = collections.Counter(str(t["rc"]) for t in trials)
    clean = sum(t["clean"] for t in trials)
    metrics = [common.metric("clean exits (130, one error line)", clean, f"of {n}", target=f"{n} of {n}",
                             passed=clean == n)]
    if args.resume_check:
        resumed = sum(bool(t.get("resumed")) for t in trials)
        metrics.append(common.metric("interrupted runs that resume", resumed, f"of {clean}"))
    details = {"exit_codes": dict(sorted(hist.items())), "trials": trials, "max_delay": args.max_delay,
               "signal": int(signal.SIGINT)}
    common.emit(common.document("stress_sigint", metrics, details, args.quick, load_before, started), args.out)


if __name__ == "__main__":
    main()
