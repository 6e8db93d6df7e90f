"""The benchmark scripts run and write valid JSON. Speed targets are measured by the scripts, never asserted here."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import VIDEOS

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"
sys.path.insert(0, str(BENCH))

import bench_cli  # noqa: E402
import common  # noqa: E402
import run_all  # noqa: E402


def _run(argv: list[str], timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=timeout, cwd=REPO)


def _check_document(doc: dict, name: str) -> None:
    assert doc["benchmark"] == name
    assert doc["quick"] is True
    assert doc["command"].startswith(f"python benchmarks/bench_{name}.py")
    assert "--out" not in doc["command"]
    assert len(doc["machine"]["loadavg_before"]) == 3
    assert doc["metrics"]
    for m in doc["metrics"]:
        assert set(m) >= {"name", "value", "unit", "target", "passed"}
        assert m["value"] is not None and m["value"] >= 0
        assert m["passed"] in (True, False, None)
        assert (m["passed"] is None) == (not m["target"])


def test_time_calls_excludes_warmup_and_summary():
    calls = []
    times = common.time_calls(lambda: calls.append(1), repeat=3, warmup=2)
    assert len(calls) == 5 and len(times) == 3
    s = common.summary([3.0, 1.0, 2.0])
    assert (s["median"], s["min"], s["max"], s["n"]) == (2.0, 1.0, 3.0, 3)


def test_metric_and_command_line():
    m = common.metric("x", 1.23456, "s", "< 2 s", True)
    assert m == {"name": "x", "value": 1.2346, "unit": "s", "target": "< 2 s", "passed": True, "note": ""}
    cmd = common.command_line([str(BENCH / "bench_x.py"), "--quick", "--out", "/tmp/a.json"])
    assert cmd == "python benchmarks/bench_x.py --quick"


def test_parse_importtime_finds_frameworks_and_offenders():
    text = textwrap.dedent("""\
        import time: self [us] | cumulative | imported package
        import time:       100 |        100 |     numpy._core
        import time:       200 |        300 |   numpy
        import time:      5000 |       5000 |     tensorflow.python
        import time:        10 |       5010 |   tensorflow
        import time:        50 |       5360 | vidcli.cli.main
        import time:        30 |         30 | site
        """)
    prof = bench_cli.parse_importtime(text)
    assert prof["modules"] == 6
    assert prof["total_ms"] == pytest.approx(5.4)
    assert prof["frameworks_imported"] == ["tensorflow"]
    assert prof["top_cumulative"][0]["module"] == "vidcli.cli.main"
    assert prof["top_self"][0]["module"] == "tensorflow.python"
    assert bench_cli.parse_importtime(text.replace("tensorflow", "rich"))["frameworks_imported"] == []


def _fake_benchmarks(folder: Path) -> None:
    good = {"benchmark": "good", "command": "python benchmarks/bench_good.py", "machine": {"loadavg_after": [1, 1, 1]},
            "metrics": [{"name": "speed", "value": 4.5, "unit": "x", "target": ">= 3x", "passed": True},
                        {"name": "slow", "value": 2.0, "unit": "s", "target": "< 1 s", "passed": False}]}
    (folder / "bench_good.py").write_text(
        f"import json, sys\nprint('log', file=sys.stderr)\ndoc = json.loads({json.dumps(good)!r})\n"
        "doc['argv'] = sys.argv[1:]\nprint(json.dumps(doc))\n")
    (folder / "bench_crash.py").write_text("raise SystemExit(3)\n")
    (folder / "bench_garbage.py").write_text("print('not json')\n")
    (folder / "helper.py").write_text("raise SystemExit('must not run')\n")


def test_run_all_collects_results_and_prints_table(tmp_path):
    _fake_benchmarks(tmp_path)
    results = tmp_path / "results"
    (results).mkdir()
    (results / "crash.json").write_text('{"old": true}')
    md = tmp_path / "table.md"
    proc = _run([str(BENCH / "run_all.py"), "--bench-dir", str(tmp_path), "--results-dir", str(results),
                 "--markdown", str(md), "--pass", "good", "--flag 'a b'"], timeout=120)
    assert proc.returncode == 1, proc.stderr
    saved = json.loads((results / "good.json").read_text())
    assert saved["metrics"][0]["value"] == 4.5
    assert saved["argv"] == ["--flag", "a b"]
    assert json.loads((results / "crash.json").read_text()) == {"old": True}
    assert not (results / "garbage.json").exists() and not (results / "helper.json").exists()
    assert not [p for p in results.iterdir() if ".partial-" in p.name]
    table = proc.stdout
    assert table == md.read_text()
    assert table.startswith("| benchmark | metric | value | target | pass/fail | command |")
    assert "| good | speed | 4.5 x | >= 3x | pass | `python benchmarks/bench_good.py` |" in table
    assert "| good | slow | 2 s | < 1 s | **FAIL** |" in table
    assert "| crash | - | - | - | **FAILED**: exit code 3 |" in table
    assert "| garbage | - | - | - | **FAILED**: bad output" in table
    again = _run([str(BENCH / "run_all.py"), "--bench-dir", str(tmp_path), "--results-dir", str(results),
                  "--from-results", "--only", "good", "garbage"], timeout=60)
    assert again.returncode == 0
    assert again.stdout.splitlines()[:4] == table.splitlines()[:2] + [r for r in table.splitlines() if "| good |" in r]
    assert "garbage" not in again.stdout and "argv" not in again.stdout


def test_run_all_only_rejects_unknown_names(tmp_path):
    _fake_benchmarks(tmp_path)
    picked = run_all.discover(tmp_path, ["good", "bench_crash.py"])
    assert [p.name for p in picked] == ["bench_crash.py", "bench_good.py"]
    with pytest.raises(SystemExit, match="no such benchmark: nope"):
        run_all.discover(tmp_path, ["nope"])
    assert {"cli", "pipeline"} <= {run_all.bench_name(p) for p in run_all.discover(BENCH)}


def _quick(tmp_path: Path, name: str, *args: str) -> dict:
    """`benchmarks/bench_<name>.py --quick ARGS`: its JSON document, the same on stdout and in --out, checked."""
    out = tmp_path / f"{name}.json"
    proc = _run([str(BENCH / f"bench_{name}.py"), "--quick", *args, "--out", str(out)])
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads(proc.stdout)
    assert doc == json.loads(out.read_text())
    _check_document(doc, name)
    return doc


@pytest.mark.slow
def test_bench_pipeline_quick_writes_json(tmp_path):
    assert (VIDEOS / "Megamind.avi").is_file(), f"test videos missing at {VIDEOS}"
    doc = _quick(tmp_path, "pipeline")
    real = doc["details"]["real"]
    for side in ("ours_train", "ours_train_1worker", "ours_eval", "tutorial"):
        assert real[side]["batch_shape"][1:] == [10, 224, 224, 3]
        assert real[side]["clips_per_epoch"] == real["clips"] == 2
    assert doc["details"]["synth"]["tutorial"]["batch_shape"][1:] == [8, 64, 64, 3]
    assert {m["name"] for m in doc["metrics"]} >= {"real: ours train / tutorial", "synth: ours train / tutorial"}


@pytest.mark.slow
def test_bench_cli_quick_writes_json(tmp_path, run_copy, tiny_onnx):
    """On the suite's shared tiny run (training it here again would double the cost)."""
    assert (VIDEOS / "Megamind.avi").is_file(), f"test videos missing at {VIDEOS}"
    shutil.copyfile(tiny_onnx, run_copy / "model.onnx")
    doc = _quick(tmp_path, "cli", "--model", str(run_copy))
    d = doc["details"]
    assert d["help"]["n"] == 3
    for side in ("predict_onnx", "predict_keras"):
        top = d[side]["result"]["top_k"]
        assert d[side]["result"]["source"].endswith("Megamind.avi")
        assert sum(t["probability"] for t in top) == pytest.approx(1.0, abs=1e-4)
    assert d["predict_onnx"]["result"]["top_k"][0]["label"] == d["predict_keras"]["result"]["top_k"][0]["label"]
    assert d["importtime_help"]["frameworks_imported"] == []
    assert d["importtime_predict_onnx"]["returncode"] == 0
    assert d["model"]["run"] == str(run_copy.resolve()) and (run_copy / "model.onnx").is_file()


@pytest.mark.slow
def test_bench_train_quick_times_each_family_through_its_trainer(tmp_path):
    doc = _quick(tmp_path, "train", "--families", "r2plus1d,tsm", "--precisions", "float32,mixed_bfloat16")
    rows = {(r["family"], r["precision"]): r for r in doc["details"]["rows"]}
    assert set(rows) == {(f, p) for f in ("r2plus1d", "tsm") for p in ("float32", "mixed_bfloat16")}
    for r in rows.values():
        assert "error" not in r, r
        assert r["clips_per_s"] > 0 and r["step_ms"] > 0 and r["batch"] == 2 and r["device"] == "cpu"
    assert rows[("r2plus1d", "mixed_bfloat16")]["effective_precision"] == "mixed_bfloat16"
    assert rows[("tsm", "mixed_bfloat16")]["effective_precision"] == "float32"  # torch AMP needs CUDA
    names = [m["name"] for m in doc["metrics"]]
    assert "r2plus1d mixed_bfloat16 / float32" in names and "tsm mixed_bfloat16 / float32" not in names


@pytest.mark.slow
def test_bench_stream_quick_times_both_stream_models(tmp_path):
    doc = _quick(tmp_path, "stream")
    assert [m["model"] for m in doc["details"]["models"]] == ["TSM-MobileNetV2 online", "MoViNet-A0 stream"]
    assert all(m["states"] > 0 and m["per_frame_1_thread_s"]["median"] > 0 for m in doc["details"]["models"])


@pytest.mark.slow
def test_bench_predict_quick_compares_sequential_and_parallel(tmp_path):
    doc = _quick(tmp_path, "predict")
    assert set(doc["details"]["runs"]) == {"sequential", "parallel"} and doc["details"]["files"] == 6
