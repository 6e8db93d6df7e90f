"""Run every benchmarks/bench_*.py, keep each JSON document in benchmarks/results/<name>.json and
print one Markdown table for BENCHMARKS.md.

Benchmarks run one after another (never two heavy jobs at once on a shared machine). A benchmark
that fails or prints no valid JSON gets a FAILED row and its old result file is left as it was.

    python benchmarks/run_all.py [--quick] [--only NAME ...] [--results-dir DIR] [--markdown FILE]
    python benchmarks/run_all.py --from-results      # the table of the saved results, nothing run
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

HERE = Path(__file__).resolve().parent


def discover(folder: Path, only: list[str] | None = None) -> list[Path]:
    scripts = sorted(folder.glob("bench_*.py"))
    if only:
        wanted = {n.removeprefix("bench_").removesuffix(".py") for n in only}
        unknown = wanted - {bench_name(s) for s in scripts}
        if unknown:
            raise SystemExit(f"no such benchmark: {', '.join(sorted(unknown))}")
        scripts = [s for s in scripts if bench_name(s) in wanted]
    return scripts


def bench_name(script: Path) -> str:
    return script.stem.removeprefix("bench_")


def parse_document(stdout: str) -> dict[str, Any]:
    """The last non-empty stdout line must be the benchmark's JSON document with a metrics list."""
    lines = [ln for ln in stdout.splitlines() if ln.strip()]
    if not lines:
        raise ValueError("printed nothing on stdout")
    doc = json.loads(lines[-1])
    if not isinstance(doc, dict) or not isinstance(doc.get("metrics"), list):
        raise ValueError("stdout JSON has no 'metrics' list")
    return doc


def run_one(script: Path, quick: bool, timeout: float, extra: list[str] | None = None) -> dict[str, Any]:
    argv = [sys.executable, str(script)] + (["--quick"] if quick else []) + (extra or [])
    common.log(f"== {script.name} {'(quick)' if quick else ''}")
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=None, text=True, timeout=timeout, cwd=common.REPO)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:g} s"}
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        return {"error": f"exit code {proc.returncode}"}
    try:
        doc = parse_document(proc.stdout)
    except ValueError as exc:
        return {"error": f"bad output: {exc}"}
    doc.setdefault("seconds", round(seconds, 2))
    return doc


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def _verdict(passed: bool | None) -> str:
    return {True: "pass", False: "**FAIL**", None: "-"}[passed]


def markdown(results: dict[str, dict[str, Any]]) -> str:
    rows = ["| benchmark | metric | value | target | pass/fail | command |", "|---|---|---|---|---|---|"]
    for name, doc in results.items():
        if "error" in doc:
            rows.append(f"| {name} | - | - | - | **FAILED**: {doc['error']} | `python benchmarks/bench_{name}.py` |")
            continue
        cmd = f"`{doc.get('command', f'python benchmarks/bench_{name}.py')}`"
        for m in doc["metrics"]:
            unit = f" {m['unit']}" if m.get("unit") else ""
            rows.append(f"| {name} | {m['name']} | {_fmt(m.get('value'))}{unit} | {m.get('target') or '-'} | "
                        f"{_verdict(m.get('passed'))} | {cmd} |")
    loads = {n: d["machine"].get("loadavg_after") for n, d in results.items() if "machine" in d}
    if loads:
        rows.append("")
        rows.append("Load average (1, 5, 15 min) after each benchmark: "
                    + "; ".join(f"{n} {v}" for n, v in loads.items()))
    return "\n".join(rows) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="Pass --quick to every benchmark (smoke run).")
    p.add_argument("--only", nargs="*", default=None, help="Benchmark names (tsm or bench_tsm.py) to run.")
    p.add_argument("--results-dir", type=Path, default=None,
                   help="Where <name>.json go (default benchmarks/results, or benchmarks/results/quick with --quick).")
    p.add_argument("--bench-dir", type=Path, default=HERE, help="Folder to look for bench_*.py in.")
    p.add_argument("--markdown", type=Path, default=None, help="Also write the table to this file.")
    p.add_argument("--timeout", type=float, default=3600, help="Seconds per benchmark.")
    p.add_argument("--from-results", action="store_true", help="Run nothing: print the table of the saved results.")
    p.add_argument("--pass", dest="passthrough", nargs=2, action="append", default=[], metavar=("NAME", "ARGS"),
                   help="Extra arguments for one benchmark, e.g. --pass cli '--model runs/quickstart/1'.")
    args = p.parse_args()
    extra = {n.removeprefix("bench_").removesuffix(".py"): shlex.split(a) for n, a in args.passthrough}

    results_dir = args.results_dir or (common.RESULTS / "quick" if args.quick else common.RESULTS)
    results: dict[str, dict[str, Any]] = {}
    for script in discover(args.bench_dir, args.only):
        name = bench_name(script)
        if args.from_results:
            saved = results_dir / f"{name}.json"
            if saved.is_file():
                results[name] = json.loads(saved.read_text(encoding="utf-8"))
            continue
        doc = run_one(script, args.quick, args.timeout, extra.get(name))
        results[name] = doc
        if "error" in doc:
            common.log(f"   {name}: {doc['error']}")
        else:
            common.write_json(results_dir / f"{name}.json", doc)
    table = markdown(results)
    if args.markdown:
        from vidcli import fsio

        fsio.write_text(args.markdown, table)
    sys.stdout.write(table)
    return 1 if any("error" in d for d in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
