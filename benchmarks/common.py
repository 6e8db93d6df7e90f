"""Helpers every `bench_*.py` shares: timing with warm-up, the JSON result document, machine info.

A benchmark prints exactly one JSON document on stdout (logs go to stderr) so `run_all.py` and CI
can collect it without parsing prose; see README.md for the document's fields.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
VIDEOS = REPO / "tests" / "data" / "videos"  # the real test clips kept in the repository


def parser(description: str) -> argparse.ArgumentParser:
    """The options every benchmark takes, so run_all can drive any of them the same way."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="Tiny sizes and few repeats: a smoke run, not a measurement.")
    p.add_argument("--out", type=Path, default=None, help="Also write the JSON document to this file.")
    return p


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _versions() -> dict[str, str]:
    out = {}
    for pkg in ("vidcli", "numpy", "opencv-python-headless", "tensorflow", "keras", "torch", "onnxruntime"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            continue
    return out


def machine() -> dict[str, Any]:
    """What the numbers were measured on; the load average matters on a shared machine."""
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "affinity_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "loadavg": loadavg(),
        "versions": _versions(),
    }


def time_calls(fn: Callable[[], Any], repeat: int, warmup: int = 1) -> list[float]:
    """Wall seconds of `repeat` calls after `warmup` untimed ones (caches, lazy imports, tracing)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def summary(times: Sequence[float]) -> dict[str, Any]:
    return {
        "median": statistics.median(times),
        "min": min(times),
        "max": max(times),
        "n": len(times),
        "all": [round(t, 4) for t in times],
    }


def run_process(argv: Sequence[str], env: dict[str, str] | None = None, timeout: float = 600) -> tuple[float, str, str]:
    """Run a fresh process; (wall seconds from spawn to exit, stdout, stderr). Raises on a non-zero exit."""
    t0 = time.perf_counter()
    proc = subprocess.run(list(argv), capture_output=True, text=True, env=env, timeout=timeout)
    dt = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise RuntimeError(f"{shlex.join(argv)} exited {proc.returncode}: {' | '.join(tail)}")
    return dt, proc.stdout, proc.stderr


def metric(name: str, value: float | None, unit: str, target: str = "", passed: bool | None = None,
           note: str = "") -> dict[str, Any]:
    """One row of the benchmark table. `passed` is None when the metric has no target."""
    v = None if value is None else round(float(value), 4)
    return {"name": name, "value": v, "unit": unit, "target": target, "passed": passed, "note": note}


def command_line(argv: Sequence[str] | None = None) -> str:
    """How to reproduce this run from the repo root."""
    argv = list(sys.argv if argv is None else argv)
    script = Path(argv[0]).resolve()
    try:
        script_s = str(script.relative_to(REPO))
    except ValueError:
        script_s = str(script)
    rest = [a for a in argv[1:]]
    if "--out" in rest:
        i = rest.index("--out")
        del rest[i : i + 2]
    return shlex.join(["python", script_s, *rest])


def document(name: str, metrics: list[dict[str, Any]], details: dict[str, Any], quick: bool,
             load_before: list[float] | None, started: float) -> dict[str, Any]:
    info = machine()
    info["loadavg_before"] = load_before
    info["loadavg_after"] = info.pop("loadavg")
    return {
        "benchmark": name,
        "quick": quick,
        "command": command_line(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "seconds": round(time.time() - started, 2),
        "machine": info,
        "metrics": metrics,
        "details": details,
    }


def write_json(path: Path, doc: dict[str, Any]) -> None:
    """Atomic: a reader never sees half a result file."""
    from vidcli import fsio

    fsio.write_json(path, doc)


def emit(doc: dict[str, Any], out: Path | None) -> None:
    if out is not None:
        write_json(out, doc)
    sys.stdout.write(json.dumps(doc) + "\n")
    sys.stdout.flush()
