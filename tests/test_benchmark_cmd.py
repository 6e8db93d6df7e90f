"""`vidcli benchmark`: a row for every format and batch asked, ONNX parity with the framework, recipes with
random weights, the input pipeline alone, and one-line errors for bad input. Speeds are only checked to be
positive, never compared with a number."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, env, one_error_line, tiny_recipe_dict, write_recipe
from typer.testing import CliRunner

from vidcli import benchmarking
from vidcli import recipe as recipe_mod
from vidcli.cli.main import app
from vidcli.errors import VidcliError
from vidcli.modelcard import ModelCard
from vidcli.models import sample_shape

runner = CliRunner()
FAST = ["--runs", "2", "--warmup", "1"]
ONE_THREAD = ["--threads", "1"]  # torch with 2 threads on a busy 2-core machine is many times slower


def bench(*args: str):
    return runner.invoke(app, ["benchmark", *args])


def bench_json(*args: str) -> dict:
    result = bench(*args, "--json")
    assert result.exit_code == 0, result.stderr + repr(result.exception)
    return json.loads(result.stdout)  # stdout holds the JSON object and nothing else


def bench_error(*args: str) -> str:
    result = bench(*args)
    assert result.exit_code == 2, result.stdout + result.stderr + repr(result.exception)
    assert result.stdout == ""
    return one_error_line(result.stderr, only=False)


def tiny_tsm_dict(data_root: Path, **data) -> dict:
    """A TSM of width 8, one block per stage, 4 segments of 32x32: builds and exports in a few seconds."""
    return {
        "name": "tsm_tiny",
        "data": {"root": str(data_root), "frames": 4, "size": [32, 32], "sampling": "segments", "flip": False,
                 **data},
        "model": {"arch": "tsm", "pretrained": "pretrained/not_there.pth",
                  "params": {"num_segments": 4, "shift_div": 4, "width": 8, "layers": [1, 1, 1, 1], "dropout": 0.0}},
        "train": {"batch_size": 3, "seed": 0},
    }


def fake_run(folder: Path, raw: dict, labels: tuple[str, ...] = ("a", "b", "c")) -> Path:
    """A run folder as far as its files go (recipe, labels, state), never trained."""
    write_recipe(folder / "recipe.yaml", raw)
    (folder / "labels.json").write_text(json.dumps(list(labels)))
    (folder / "run.json").write_text('{"status": "created"}')
    return folder


def check_rows(doc: dict, formats: list[str], batches: list[int]) -> None:
    assert [(r["format"], r["batch"]) for r in doc["rows"]] == [(f, b) for f in formats for b in batches]
    for r in doc["rows"]:
        assert r["runs"] == 2
        assert 0 < r["min_ms"] <= r["median_ms"] <= r["p90_ms"]
        assert r["clips_per_s"] == pytest.approx(r["batch"] * 1000 / r["median_ms"], rel=1e-3)
        assert r["device"] == "cpu"


# --- argument parsing ---------------------------------------------------------------------------------


def test_parse_batches():
    assert benchmarking.parse_batches("1, 8,1") == [1, 8]
    assert benchmarking.parse_batches("4") == [4]
    for bad in ("1,x", "0", "", "-1", "1,,2", "2.5"):
        with pytest.raises(VidcliError, match="--batch"):
            benchmarking.parse_batches(bad)


def test_parse_formats_follows_the_model():
    def target(arch: str, kind: str = "run") -> benchmarking.Target:
        rec = recipe_mod.from_dict(recipe_mod.Recipe, {"name": "x", "model": {"arch": arch}})
        card = ModelCard(labels=["a"], frames=4, size=(32, 32))
        return benchmarking.Target("m", kind, card, arch, rec if kind != "onnx" else None)

    keras, tsm, onnx = target("r2plus1d"), target("tsm"), target("r2plus1d", "onnx")
    assert benchmarking.parse_formats(None, keras) == ["keras", "onnx"]
    assert benchmarking.parse_formats(None, tsm) == ["torch", "onnx"]
    assert benchmarking.parse_formats(None, onnx) == ["onnx"]
    assert benchmarking.parse_formats("ONNX, keras,onnx", keras) == ["onnx", "keras"]
    with pytest.raises(VidcliError, match="runs as keras or onnx, not torch"):
        benchmarking.parse_formats("torch", keras)
    with pytest.raises(VidcliError, match="not keras"):
        benchmarking.parse_formats("keras", onnx)
    with pytest.raises(VidcliError, match="unknown format 'tflite'"):
        benchmarking.parse_formats("onnx,tflite", keras)
    with pytest.raises(VidcliError, match="did you mean 'torch'"):
        benchmarking.parse_formats("torchh", tsm)


def test_time_calls_counts_what_it_should():
    calls = []
    times = benchmarking.time_calls(lambda: calls.append(1), warmup=2, runs_=3, seconds=None)
    assert len(calls) == 5 and len(times) == 3 and all(t >= 0 for t in times)
    assert len(benchmarking.time_calls(lambda: None, warmup=0, runs_=100, seconds=1e-6)) >= 1


def test_volume_shape_without_data(tmp_path):
    def rec(**data) -> recipe_mod.Recipe:
        return recipe_mod.from_dict(recipe_mod.Recipe, {"name": "v", "data": {"format": "volumes", **data},
                                                        "model": {"arch": "vivit"}})

    assert sample_shape(rec(root=str(tmp_path / "organmnist3d_64.npz"))) == (64, 64, 64, 1)
    synth = {"volumes": True, "classes": 4, "size": 20}
    assert sample_shape(rec(root=str(tmp_path / "x.npz"), synth=synth)) == (20, 20, 20, 1)
    with pytest.raises(VidcliError, match="data.root"):
        sample_shape(rec(root=str(tmp_path / "x.npz")))


# --- models ---------------------------------------------------------------------------------------------


@pytest.mark.slow  # needs the session's trained model
def test_run_in_keras_and_onnx(tiny_run):
    doc = bench_json(str(tiny_run), "--batch", "1,2", *FAST, *ONE_THREAD)
    assert doc["mode"] == "model"
    m = doc["model"]
    assert (m["kind"], m["arch"], m["backend"], m["classes"]) == ("run", "r2plus1d", "keras", 3)
    assert m["input_shape"] == [4, 32, 32, 3] and m["layout"] == "NTHWC" and m["onnx_bytes"] > 0
    check_rows(doc, ["keras", "onnx"], [1, 2])
    diffs = {(r["format"], r["batch"]): r["max_abs_diff"] for r in doc["rows"]}
    assert diffs[("keras", 1)] == diffs[("keras", 2)] == 0
    assert 0 <= diffs[("onnx", 1)] < 1e-3 and 0 <= diffs[("onnx", 2)] < 1e-3
    assert doc["settings"]["threads"] == 1 and doc["settings"]["runs"] == 2
    assert doc["machine"]["cpus"] >= 1 and "onnxruntime" in doc["machine"]["versions"]
    assert not (tiny_run / "model.onnx").exists()  # the export went to a temporary file


@pytest.mark.slow  # needs the session's trained model
def test_newest_run_prints_a_table(run_copy, tmp_path):
    result = bench("--runs-dir", str(tmp_path / "runs"), "--formats", "onnx", "--batch", "3", *FAST, *ONE_THREAD)
    assert result.exit_code == 0, result.stderr + repr(result.exception)
    out = result.stdout
    for column in ("format", "batch", "median ms", "p90 ms", "clips/s", "max |diff|"):
        assert column in out
    rows = [line for line in out.splitlines() if line.startswith("│")]
    assert len(rows) == 1 and rows[0].split("│")[1].strip() == "onnx" and rows[0].split("│")[2].strip() == "3"
    assert "keras logits" in out
    assert "timing onnx, batch 3" in result.stderr


@pytest.mark.slow  # needs the session's exported model
def test_onnx_file_has_only_the_onnx_format(tiny_onnx):
    doc = bench_json(str(tiny_onnx), "--batch", "2", *FAST)
    assert doc["model"]["kind"] == "onnx" and doc["model"]["classes"] == 3
    check_rows(doc, ["onnx"], [2])
    assert doc["rows"][0]["max_abs_diff"] is None  # nothing to compare with
    assert "not keras" in bench_error(str(tiny_onnx), "--formats", "keras")
    assert ".onnx file" in bench_error(str(tiny_onnx), "--data")


def test_keras_recipe_with_random_weights(tmp_path, tiny_data, monkeypatch):
    """Classes come from the data when it is there, else 10; --set changes the shapes; nothing is left behind."""
    monkeypatch.chdir(tmp_path)
    recipe = write_recipe(tmp_path / "tiny.yaml", tiny_recipe_dict(tmp_path / "no_data"))
    doc = bench_json(str(recipe), "--set", "data.size=[16,16]", "--formats", "onnx", *FAST, *ONE_THREAD)
    assert (doc["model"]["kind"], doc["model"]["classes"]) == ("recipe", 10)
    assert doc["model"]["input_shape"] == [4, 16, 16, 3]
    check_rows(doc, ["onnx"], [1])
    assert 0 <= doc["rows"][0]["max_abs_diff"] < 1e-3

    recipe = write_recipe(tmp_path / "tiny_data.yaml", tiny_recipe_dict(tiny_data))
    doc = bench_json(str(recipe), "--batch", "1,3", *FAST, *ONE_THREAD)
    assert doc["model"]["classes"] == 3
    check_rows(doc, ["keras", "onnx"], [1, 3])
    assert all(r["max_abs_diff"] < 1e-3 for r in doc["rows"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.yaml", "tiny_data.yaml"]


def test_tsm_recipe_in_torch_and_onnx(tmp_path, monkeypatch):
    import onnx

    metadata = {}
    session = benchmarking.onnx_session

    def spy(path, *args):
        metadata.update((p.key, p.value) for p in onnx.load(str(path)).metadata_props)
        return session(path, *args)

    monkeypatch.setattr(benchmarking, "onnx_session", spy)
    recipe = write_recipe(tmp_path / "tsm.yaml", tiny_tsm_dict(tmp_path / "no_data"))
    result = bench(str(recipe), "--classes", "5", "--batch", "1,2", "--json", *FAST, *ONE_THREAD)
    assert result.exit_code == 0, result.stderr + repr(result.exception)
    assert "random weights: pretrained/not_there.pth is not loaded" in result.stderr
    doc = json.loads(result.stdout)
    m = doc["model"]
    assert (m["arch"], m["backend"], m["classes"], m["layout"]) == ("tsm", "torch", 5, "N(TC)HW")
    assert m["input_shape"] == [12, 32, 32] and m["clip_shape"] == [4, 32, 32, 3]
    check_rows(doc, ["torch", "onnx"], [1, 2])
    assert [r["max_abs_diff"] for r in doc["rows"][:2]] == [0, 0]
    assert all(0 <= r["max_abs_diff"] < 1e-3 for r in doc["rows"][2:])
    # the temporary ONNX file carries what `export-onnx` would write
    assert (metadata["layout"], metadata["size"], metadata["channels"], metadata["frames"]) == \
        ("N(TC)HW", "[32, 32]", "3", "4")
    assert json.loads(metadata["labels"]) == [f"class_{i}" for i in range(5)] and metadata["arch"] == "tsm"


# --- input pipeline -------------------------------------------------------------------------------------


def test_data_keras_pipeline_epochs_with_and_without_the_cache(tmp_path, tiny_data):
    """Whole epochs from a fresh pipeline, cache off then on (an empty temporary cache, removed afterwards)."""
    recipe = write_recipe(tmp_path / "tiny.yaml", tiny_recipe_dict(tiny_data))
    doc = bench_json(str(recipe), "--data", "--batch", "4", "--epochs", "2")
    assert doc["mode"] == "data"
    assert doc["data"]["pipeline"] == "tf.data" and doc["data"]["clips"] == 18
    assert doc["data"]["clip_shape"] == [4, 32, 32, 3]
    assert doc["settings"] == {"batches": [4], "epochs": 2, "cache": "both", "workers": 0}
    assert [(r["cache"], r["epoch"]) for r in doc["rows"]] == [("off", "cold"), ("off", "warm"), ("on", "cold"),
                                                               ("on", "warm")]
    for r in doc["rows"]:
        assert (r["batch"], r["clips"], r["runs"]) == (4, 18, 1)
        assert r["clips_per_s"] == pytest.approx(18 / r["seconds"], rel=1e-3)
        assert r["cpu_ms_per_clip"] > 0
    cache = doc["data"]["cache"]
    assert cache["temporary"] and cache["writable"] and cache["bytes"] > 18 * 4 * 32 * 32 * 3
    assert not Path(cache["folder"]).exists()


def test_data_cache_folder_is_kept_and_warm_the_second_time(tmp_path, tiny_data):
    recipe = write_recipe(tmp_path / "tiny.yaml", tiny_recipe_dict(tiny_data))
    args = (str(recipe), "--data", "--batch", "6", "--epochs", "1", "--cache", "on", "--cache-dir",
            str(tmp_path / "frames"))
    first = bench_json(*args)
    entries = sorted((tmp_path / "frames").rglob("*.frames"))
    assert len(entries) == 18 and first["data"]["cache"]["bytes"] == sum(e.stat().st_size for e in entries)
    mtimes = [e.stat().st_mtime_ns for e in entries]
    second = bench_json(*args)
    assert [r["cache"] for r in second["rows"]] == ["on"]
    assert [e.stat().st_mtime_ns for e in sorted((tmp_path / "frames").rglob("*.frames"))] == mtimes  # only read


def test_data_torch_pipeline_table(tmp_path, tiny_data):
    """Without --batch the recipe's train.batch_size; segment sampling goes through the cache too."""
    recipe = write_recipe(tmp_path / "tsm.yaml", tiny_tsm_dict(tiny_data))
    result = bench(str(recipe), "--data", "--epochs", "2", "--cache", "off")
    assert result.exit_code == 0, result.stderr + repr(result.exception)
    rows = [line.split("│")[1:-1] for line in result.stdout.splitlines() if line.startswith("│")]
    assert len(rows) == 2
    cells = [[c.strip() for c in row] for row in rows]
    assert [c[:5] for c in cells] == [["DataLoader", "3", "0", "off", "cold"], ["DataLoader", "3", "0", "off", "warm"]]
    assert all(float(c[5]) > 0 and float(c[6]) > 0 and float(c[7]) > 0 for c in cells)
    assert "whole epochs" in result.stdout


def test_data_of_a_run(tmp_path, tiny_data):
    run = fake_run(tmp_path / "run", tiny_recipe_dict(tiny_data), labels=("left", "right", "up"))
    doc = bench_json(str(run), "--data", "--batch", "6", "--workers", "1", "--epochs", "1", "--cache", "off")
    assert doc["data"]["source"] == str(run) and doc["settings"]["workers"] == 1
    assert [r["clips"] for r in doc["rows"]] == [18] and doc["data"]["cache"] is None


def test_data_missing_root(tmp_path):
    recipe = write_recipe(tmp_path / "tiny.yaml", tiny_recipe_dict(tmp_path / "no_data"))
    line = bench_error(str(recipe), "--data")
    assert "data.root" in line and "no_data" in line


# --- bad input ------------------------------------------------------------------------------------------


def test_bad_paths(tmp_path):
    assert "not found" in bench_error(str(tmp_path / "nope"))
    (tmp_path / "notes.txt").write_text("x")
    assert "not a run folder, a recipe (.yaml) or an .onnx file" in bench_error(str(tmp_path / "notes.txt"))
    (tmp_path / "plain").mkdir()
    assert "not a vidcli run folder" in bench_error(str(tmp_path / "plain"))
    (tmp_path / "broken.onnx").write_bytes(b"not a model")
    assert "not a loadable ONNX model" in bench_error(str(tmp_path / "broken.onnx"))
    assert "no runs found" in bench_error("--runs-dir", str(tmp_path / "empty"))


def test_bad_options(tmp_path):
    run = fake_run(tmp_path / "run", tiny_recipe_dict(tmp_path / "no_data"))
    assert "'1,x'" in bench_error(str(run), "--batch", "1,x")
    assert "unknown format 'tflite'" in bench_error(str(run), "--formats", "keras,tflite")
    assert "not torch" in bench_error(str(run), "--formats", "torch")
    assert "--set applies to a recipe" in bench_error(str(run), "--set", "data.frames=2")
    assert "--classes applies to a recipe" in bench_error(str(run), "--classes", "4")
    assert "--device" in bench_error(str(run), "--device", "gpu")
    assert "--workers: applies to --data only" in bench_error(str(run), "--workers", "2")
    assert "--formats, --threads: not used with --data" in bench_error(str(run), "--data", "--formats", "onnx",
                                                                        "--threads", "1")
    assert "--runs: not used with --data" in bench_error(str(run), "--data", "--runs", "3")
    assert "--epochs, --cache: applies to --data only" in bench_error(str(run), "--epochs", "2", "--cache", "on")
    assert "--cache: expected one of both, on, off" in bench_error(str(run), "--data", "--cache", "maybe")
    assert "--runs" in bench_error(str(run), "--runs", "0")
    assert "--runs and --seconds" in bench_error(str(run), "--runs", "3", "--seconds", "2")


def test_untrained_run_and_bad_recipes(tmp_path):
    run = fake_run(tmp_path / "run", tiny_recipe_dict(tmp_path / "no_data"))
    assert "no checkpoint" in bench_error(str(run), "--formats", "onnx")
    raw = tiny_recipe_dict(tmp_path / "no_data")
    raw["model"]["arch"] = "r2plus1"
    assert "did you mean 'r2plus1d'" in bench_error(str(write_recipe(tmp_path / "bad.yaml", raw)))
    raw = {"name": "s", "model": {"arch": "movinet", "params": {"causal": True}}}
    assert "stream model" in bench_error(str(write_recipe(tmp_path / "stream.yaml", raw)))


@pytest.mark.slow  # a fresh process that builds and exports a model
def test_bench_formats_quick_writes_json(tmp_path):
    out = tmp_path / "formats.json"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_formats.py"), "--quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=600, cwd=REPO, env=env())
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads(proc.stdout)
    assert doc == json.loads(out.read_text())
    assert doc["benchmark"] == "formats" and doc["quick"] is True
    names = [m["name"] for m in doc["metrics"]]
    assert names[:4] == [f"{f} batch {b} median, 1 thread" for f in ("keras", "onnx") for b in (1, 8)]
    parity = doc["metrics"][-1]
    assert parity["name"] == "max abs diff onnx vs keras logits, 1 thread" and parity["passed"] is True
    assert doc["details"]["threads_1"]["result"]["model"]["input_shape"] == [4, 16, 16, 3]


PROBE = """
import runpy, sys
sys.argv = ["vidcli", *sys.argv[1:]]
try:
    runpy.run_module("vidcli", run_name="__main__")
finally:
    sys.stderr.write("IMPORTED:" + ",".join(m for m in ("tensorflow", "torch", "keras") if m in sys.modules) + "\\n")
"""


def test_help_and_bad_input_import_no_framework(tmp_path):
    """Bad input is reported before a framework loads, so the error comes at once and stands alone."""
    recipe = write_recipe(tmp_path / "tiny.yaml", tiny_recipe_dict(tmp_path / "no_data"))
    for args, code in ((["--help"], 0), ([str(recipe), "--formats", "torch"], 2), ([str(recipe), "--batch", "x"], 2)):
        proc = subprocess.run([sys.executable, "-c", PROBE, "benchmark", *args], capture_output=True, text=True,
                              env=env(), timeout=120)
        lines = proc.stderr.rstrip().splitlines()
        assert proc.returncode == code, proc.stderr
        assert lines[-1] == "IMPORTED:", proc.stderr
        if code:
            one_error_line("\n".join(lines[:-1]))
        else:
            assert "--formats" in proc.stdout and "--data" in proc.stdout
